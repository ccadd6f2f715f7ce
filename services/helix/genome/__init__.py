"""DNAs and genomes, shared by every service: DNA documents (YAML/JSON) and their checks,
the structural checks of candidates, the column layout of a DNA, the wire codec and
content-hash ids, decoding genomes against their DNA, and the named JSON form."""
