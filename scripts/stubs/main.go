// A Go program over the helix.v1 stubs that buf.gen.yaml generates (scripts/stubs.py
// builds and runs it). It proves the generated API is usable, not only that it compiles:
//
//   - it builds the two fixture messages scripts/stubs.py also builds in Python and writes
//     their wire encoding to OUT_DIR/create_run.binpb and OUT_DIR/update_agent.binpb, where
//     the script decodes them with Helix's Python modules and compares them field by field;
//   - it serves OracleService (an embedded UnimplementedOracleServiceServer plus GetOracle)
//     on a loopback port and calls it through the generated client, checking both the
//     answer and that an unimplemented RPC fails with codes.Unimplemented;
//   - it creates a client of each of the four services.
//
// Usage: go run . OUT_DIR
package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	helixv1 "helix/gen/go/helix/v1"
)

// createRunRequest is the fixture CreateRunRequest (scripts/stubs.py: expected_messages).
// It covers a oneof (dna_name), an enum, a nested message, a Duration and proto3
// optional fields.
func createRunRequest() *helixv1.CreateRunRequest {
	return &helixv1.CreateRunRequest{
		Run: &helixv1.Run{
			DisplayName: "rastrigin via stubs",
			DnaSource:   &helixv1.Run_DnaName{DnaName: "dnas/rastrigin"},
			Oracle:      "oracles/rastrigin",
			Objective:   helixv1.Objective_OBJECTIVE_MINIMIZE,
			Budget: &helixv1.RunBudget{
				MaxEvaluations: 20000,
				MaxDuration:    durationpb.New(90*time.Second + 500*time.Millisecond),
				MaxGenerations: 50,
			},
			TargetScore: proto.Float64(0.25),
			Seed:        proto.Uint64(7),
		},
		RunId:     "stubs-run",
		RequestId: "0f6c2d3e-stubs",
	}
}

// updateAgentRequest is the fixture UpdateAgentRequest: a map and a FieldMask.
func updateAgentRequest() *helixv1.UpdateAgentRequest {
	return &helixv1.UpdateAgentRequest{
		Agent: &helixv1.Agent{
			Name:   "agents/oracle-7",
			Labels: map[string]string{"zone": "eu-1", "tier": "gold"},
			Ttl:    durationpb.New(30 * time.Second),
		},
		UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"labels", "ttl"}},
	}
}

// oracleServer implements one RPC; the others answer UNIMPLEMENTED via the embedded type
// (protoc-gen-go-grpc requires it, so new RPCs never break existing servers' builds).
type oracleServer struct {
	helixv1.UnimplementedOracleServiceServer
}

func (oracleServer) GetOracle(_ context.Context, req *helixv1.GetOracleRequest) (*helixv1.GetOracleResponse, error) {
	return &helixv1.GetOracleResponse{Oracle: &helixv1.OracleInfo{
		Name:      req.GetName(),
		Capacity:  4,
		Objective: helixv1.Objective_OBJECTIVE_MAXIMIZE,
	}}, nil
}

func writeFixture(dir, name string, m proto.Message) error {
	data, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
	if err != nil {
		return fmt.Errorf("marshal %s: %w", name, err)
	}
	return os.WriteFile(filepath.Join(dir, name), data, 0o644)
}

// loopback serves OracleService on 127.0.0.1 and calls it through the generated client.
func loopback() error {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	server := grpc.NewServer()
	helixv1.RegisterOracleServiceServer(server, oracleServer{})
	go func() { _ = server.Serve(lis) }()
	defer server.Stop()

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := grpc.DialContext(ctx, lis.Addr().String(), grpc.WithInsecure(), grpc.WithBlock())
	if err != nil {
		return fmt.Errorf("dial %s: %w", lis.Addr(), err)
	}
	defer conn.Close()

	// A client of every service: the generated constructors and interfaces.
	var (
		_ helixv1.RegistryServiceClient     = helixv1.NewRegistryServiceClient(conn)
		_ helixv1.GeneratorServiceClient    = helixv1.NewGeneratorServiceClient(conn)
		_ helixv1.OrchestratorServiceClient = helixv1.NewOrchestratorServiceClient(conn)
	)
	oracles := helixv1.NewOracleServiceClient(conn)

	got, err := oracles.GetOracle(ctx, &helixv1.GetOracleRequest{Name: "oracles/sphere"})
	if err != nil {
		return fmt.Errorf("GetOracle: %w", err)
	}
	if got.GetOracle().GetName() != "oracles/sphere" || got.GetOracle().GetCapacity() != 4 ||
		got.GetOracle().GetObjective() != helixv1.Objective_OBJECTIVE_MAXIMIZE {
		return fmt.Errorf("GetOracle answered %v", got)
	}
	_, err = oracles.ListOracles(ctx, &helixv1.ListOraclesRequest{PageSize: 10})
	if status.Code(err) != codes.Unimplemented {
		return fmt.Errorf("ListOracles: want UNIMPLEMENTED, got %v", err)
	}
	return nil
}

func run(dir string) error {
	if err := writeFixture(dir, "create_run.binpb", createRunRequest()); err != nil {
		return err
	}
	if err := writeFixture(dir, "update_agent.binpb", updateAgentRequest()); err != nil {
		return err
	}
	return loopback()
}

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: helix-go-stubs OUT_DIR")
		os.Exit(2)
	}
	if err := run(os.Args[1]); err != nil {
		fmt.Fprintln(os.Stderr, "helix-go-stubs:", err)
		os.Exit(1)
	}
	fmt.Println("go stubs: fixtures written, OracleService loopback call ok")
}
