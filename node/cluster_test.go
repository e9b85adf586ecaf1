package node_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/zerogrid/zerogrid/client"
	"github.com/zerogrid/zerogrid/grid"
	"github.com/zerogrid/zerogrid/grid/gridpb"
	"github.com/zerogrid/zerogrid/node"
)

const testToken = "t0ken"

func withToken(_ string, cfg *node.Config) { cfg.JoinToken = testToken }

// joinConfig is the config of a node joining e through n1.
func (e *embedded) joinConfig(id string) (node.Config, net.Listener) {
	e.t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		e.t.Fatal(err)
	}
	cfg := node.DefaultConfig()
	cfg.ID, cfg.Listener, cfg.DataDir, cfg.Profile = id, l, filepath.Join(e.t.TempDir(), id), "test"
	cfg.Join, cfg.JoinToken, cfg.Insecure = []string{e.peers["n1"]}, testToken, true
	return cfg, l
}

func nodeStates(t *testing.T, c *client.Client) map[string]grid.NodeState {
	t.Helper()
	out := map[string]grid.NodeState{}
	retry(t, 20*time.Second, func(ctx context.Context) error {
		nodes, err := c.Nodes(ctx)
		if err != nil {
			return err
		}
		clear(out)
		for _, n := range nodes {
			out[n.ID] = n.State
		}
		return nil
	})
	return out
}

// TestCommissioningRefusesBadInput: a wrong token, a duplicate id, an address
// already in use, draining a node whose replicas have nowhere to go, removing
// a node that holds replicas, and unknown nodes and operations are each
// refused with a clear error, and nothing changes.
func TestCommissioningRefusesBadInput(t *testing.T) {
	e, c := startWithMaps(t, []string{"m"}, withToken)
	var before map[string]grid.NodeState
	retry(t, 20*time.Second, func(context.Context) error {
		if before = nodeStates(t, c); len(before) != 3 {
			return fmt.Errorf("members %v", before)
		}
		return nil
	})
	table, err := c.Table(context.Background())
	if err != nil {
		t.Fatal(err)
	}

	// Wrong token: refused; the data dir the node would have created is gone.
	cfg, l := e.joinConfig("n9")
	cfg.JoinToken = "wrong"
	_, err = node.Start(context.Background(), cfg)
	l.Close()
	if !errors.Is(err, grid.ErrJoinRefused) {
		t.Fatalf("wrong token: %v, want ErrJoinRefused", err)
	}
	if _, serr := os.Stat(cfg.DataDir); !errors.Is(serr, os.ErrNotExist) {
		t.Errorf("refused join left its data dir behind: %v", serr)
	}
	t.Logf("wrong token: %v", err)

	// Duplicate id: n2 exists.
	cfg, l = e.joinConfig("n2")
	_, err = node.Start(context.Background(), cfg)
	l.Close()
	if !errors.Is(err, grid.ErrNodeExists) {
		t.Fatalf("duplicate id: %v, want ErrNodeExists", err)
	}
	t.Logf("duplicate id: %v", err)

	// An address already used by a member (a second process cannot listen
	// there; this is the membership check behind that).
	cc, err := grpc.NewClient(e.peers["n1"], grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	raw, _ := json.Marshal(grid.NodeRecord{Node: grid.Node{ID: "n9", Addr: e.peers["n3"]}})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	_, err = gridpb.NewClusterClient(cc).Join(ctx, &gridpb.JoinRequest{Token: testToken, RecordJson: raw})
	if err = gridpb.FromStatus(err); !errors.Is(err, grid.ErrNodeExists) {
		t.Fatalf("address in use: %v, want ErrNodeExists", err)
	}
	t.Logf("address in use: %v", err)
	// A malformed record.
	_, err = gridpb.NewClusterClient(cc).Join(ctx, &gridpb.JoinRequest{Token: testToken, RecordJson: []byte("{")})
	if err = gridpb.FromStatus(err); !errors.Is(err, grid.ErrBadRequest) {
		t.Fatalf("malformed record: %v, want ErrBadRequest", err)
	}

	// Three nodes, three replicas: no drain has anywhere to go.
	if err := c.DrainNode(ctx, "n2"); !errors.Is(err, grid.ErrTooManyNodes) {
		t.Fatalf("drain of a needed replica holder: %v, want ErrTooManyNodes", err)
	} else {
		t.Logf("drain refused: %v", err)
	}
	if err := c.RemoveNode(ctx, "n2"); !errors.Is(err, grid.ErrNodeBusy) {
		t.Fatalf("remove of a replica holder: %v, want ErrNodeBusy", err)
	} else {
		t.Logf("remove refused: %v", err)
	}
	if err := c.DrainNode(ctx, "nope"); !errors.Is(err, grid.ErrUnknownNode) {
		t.Fatalf("drain of an unknown node: %v, want ErrUnknownNode", err)
	}
	if err := c.UndrainNode(ctx, "n1"); !errors.Is(err, grid.ErrBadRequest) {
		t.Fatalf("undrain of an active node: %v, want ErrBadRequest", err)
	}

	// Nothing changed: the same members in the same states, the same table.
	after := nodeStates(t, c)
	if len(after) != len(before) {
		t.Fatalf("members changed: %v → %v", before, after)
	}
	for id, s := range before {
		if after[id] != s {
			t.Errorf("%s went from %s to %s", id, s, after[id])
		}
	}
	table2, err := c.Table(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if table2.Epoch != table.Epoch {
		t.Errorf("table epoch moved from %d to %d", table.Epoch, table2.Epoch)
	}
}

// TestJoinWithoutClusterTokenRefused: a cluster founded without a token
// admits nobody.
func TestJoinWithoutClusterTokenRefused(t *testing.T) {
	e, _ := startWithMaps(t, nil)
	cfg, l := e.joinConfig("n4")
	defer l.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var err error
	retry(t, 20*time.Second, func(context.Context) error {
		_, err = node.Start(ctx, cfg)
		if errors.Is(err, grid.ErrJoinRefused) {
			return nil
		}
		return err
	})
	t.Logf("join into a tokenless cluster: %v", err)
}

// TestJobRequirementsMoveDataToCompute: a compute-only node (storage=false)
// with a label joins; a job requiring that label runs every task there,
// reading each partition over the network, and its result is exact; tasks
// report where they ran and the bytes they moved. A requirement no node
// meets is refused clearly.
func TestJobRequirementsMoveDataToCompute(t *testing.T) {
	e, c := startWithMaps(t, nil, withToken)
	data := loadSales(t, c, "sales", 200)
	cfg, _ := e.joinConfig("n4")
	cfg.Labels = map[string]string{"storage": "false", "accel": "yes"}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	n4, err := node.Start(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer n4.Shutdown(context.Background())
	// The job planner reads node records: wait until n4's is active.
	retry(t, 30*time.Second, func(context.Context) error {
		if s := nodeStates(t, c)["n4"]; s != grid.StateActive {
			return fmt.Errorf("n4 is %q", s)
		}
		return nil
	})

	var sum int64
	for _, s := range data {
		sum += s.Amount
	}
	for _, stale := range []bool{false, true} {
		res := runJob(t, c, client.Job{Map: "sales", Agg: "sum(v.amount)", Stale: stale, Requires: grid.Requirements{Labels: map[string]string{"accel": "yes"}}})
		if got := groups(res)[""]; got != sum {
			t.Errorf("stale=%v: sum on the compute node = %v, want %d", stale, got, sum)
		}
		var moved int64
		for _, tr := range res.Tasks {
			if tr.Node != "n4" || tr.BytesRead != 0 || tr.ReadFrom == "" {
				t.Errorf("task %+v: want it on n4, reading over the network", tr)
			}
			moved += tr.BytesNetwork
		}
		if moved == 0 {
			t.Error("no bytes reported moved over the network")
		}
		t.Logf("stale=%v: %d tasks on n4, %d bytes moved to compute; reason: %s", stale, len(res.Tasks), moved, res.Tasks[0].Reason)
	}

	// Explain says why.
	tasks, summary, err := c.Explain(ctx, client.Job{Map: "sales", Agg: "count", Requires: grid.Requirements{Labels: map[string]string{"accel": "yes"}}})
	if err != nil {
		t.Fatal(err)
	}
	if tasks[0].Node != "n4" || !strings.Contains(tasks[0].Reason, "data goes to compute") {
		t.Errorf("explain: %+v (%s)", tasks[0], summary)
	}

	// A requirement a replica meets keeps the task on the data.
	res := runJob(t, c, client.Job{Map: "sales", Agg: "count", Requires: grid.Requirements{Arch: []string{runtime.GOARCH}, MinRAM: 1}})
	for _, tr := range res.Tasks {
		if tr.Node == "n4" || tr.BytesNetwork != 0 {
			t.Errorf("task %+v moved data although replicas qualify", tr)
		}
	}

	// Nobody qualifies: a clear error, nothing runs.
	_, err = c.Run(ctx, client.Job{Map: "sales", Agg: "count", Requires: grid.Requirements{Arch: []string{"riscv64"}}})
	if !errors.Is(err, grid.ErrNoEligibleNodes) {
		t.Fatalf("impossible requirement: %v, want ErrNoEligibleNodes", err)
	}
	t.Logf("impossible requirement: %v", err)
}
