package node

import (
	"context"
	"errors"
	"testing"

	"google.golang.org/grpc"

	"github.com/zerogrid/zerogrid/grid"
	"github.com/zerogrid/zerogrid/grid/gridpb"
	"github.com/zerogrid/zerogrid/grid/gridtls"
)

// TestEveryMethodHasARole registers every service a node serves and checks
// that each method has a role: a method added without one would be
// refused to everybody, so this test fails first.
func TestEveryMethodHasARole(t *testing.T) {
	srv := grpc.NewServer()
	registerServices(srv, &Node{})
	gridpb.RegisterRaftServer(srv, gridpb.UnimplementedRaftServer{})
	n := 0
	for name, info := range srv.GetServiceInfo() {
		for _, m := range info.Methods {
			n++
			if method := "/" + name + "/" + m.Name; roleFor(method) == "" {
				t.Errorf("%s has no role", method)
			}
		}
	}
	if n < 35 {
		t.Fatalf("only %d methods registered", n)
	}
	if roleFor("/zerogrid.v1.KV/Unknown") != "" {
		t.Error("an unknown method has a role")
	}
}

func TestRoleGrants(t *testing.T) {
	client := func(roles ...string) gridtls.Identity {
		return gridtls.Identity{Kind: gridtls.KindClient, Name: "u", Roles: roles}
	}
	node := gridtls.Identity{Kind: gridtls.KindNode, Name: "n1"}
	for _, tc := range []struct {
		who    gridtls.Identity
		method string
		ok     bool
	}{
		{client(), gridpb.Admin_GetTable_FullMethodName, true},
		{client(), gridpb.KV_Get_FullMethodName, false},
		{client("read"), gridpb.KV_Get_FullMethodName, true},
		{client("read"), gridpb.Watch_Watch_FullMethodName, true},
		{client("read"), gridpb.KV_Put_FullMethodName, false},
		{client("write"), gridpb.KV_Put_FullMethodName, true},
		{client("write"), gridpb.Lock_Acquire_FullMethodName, true},
		{client("write"), gridpb.KV_Get_FullMethodName, false},
		{client("read", "write"), gridpb.Compute_Submit_FullMethodName, false},
		{client("compute"), gridpb.Compute_Submit_FullMethodName, true},
		{client("write"), gridpb.Backup_ReadPartition_FullMethodName, false},
		{client("admin"), gridpb.Backup_ReadPartition_FullMethodName, true},
		{client("admin"), gridpb.KV_Put_FullMethodName, true},
		{client("admin"), gridpb.Compute_Apply_FullMethodName, true},
		{client("admin"), gridpb.Raft_RequestVote_FullMethodName, false},
		{client("admin"), gridpb.Cluster_Membership_FullMethodName, false},
		{client("admin"), gridpb.Integrity_Quarantine_FullMethodName, false},
		{client("admin"), gridpb.Compute_RunTask_FullMethodName, false},
		{client("peer"), gridpb.Raft_AppendEntries_FullMethodName, false}, // peer comes only with a node certificate
		{node, gridpb.Raft_AppendEntries_FullMethodName, true},
		{node, gridpb.KV_Put_FullMethodName, true}, // a node forwards clients' requests
		{gridtls.Identity{Name: "x"}, gridpb.Admin_GetTable_FullMethodName, false},
	} {
		if got := grants(tc.who, roleFor(tc.method)); got != tc.ok {
			t.Errorf("%s %q roles %v calling %s: granted %v, want %v", tc.who.Kind, tc.who.Name, tc.who.Roles, tc.method, got, tc.ok)
		}
	}
}

// TestCapsSpareNodeMethods: a client's streams are capped, the nodes' own
// (Raft: one pipeline per group and peer) are not, also when insecure,
// where every caller on a host shares one count.
func TestCapsSpareNodeMethods(t *testing.T) {
	s := &security{maxCalls: 1, maxStreams: 1, running: map[string]int{}}
	ctx := context.Background()
	var releases []func()
	for range 3 {
		rel, err := s.admit(ctx, gridpb.Raft_AppendEntriesPipeline_FullMethodName, true)
		if err != nil {
			t.Fatalf("a Raft stream was capped: %v", err)
		}
		releases = append(releases, rel)
	}
	rel, err := s.admit(ctx, gridpb.Watch_Watch_FullMethodName, true)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.admit(ctx, gridpb.Watch_Watch_FullMethodName, true); !errors.Is(gridpb.FromStatus(err), grid.ErrTooManyRequests) {
		t.Fatalf("a second watch over a cap of one: %v", err)
	}
	rel()
	if _, err := s.admit(ctx, gridpb.Watch_Watch_FullMethodName, true); err != nil {
		t.Fatalf("a watch after one closed: %v", err)
	}
	for _, r := range releases {
		r()
	}
}
