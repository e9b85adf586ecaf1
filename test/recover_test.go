package test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/zerogrid/zerogrid/client"
	"github.com/zerogrid/zerogrid/grid"
	"github.com/zerogrid/zerogrid/grid/gridpb"
	"github.com/zerogrid/zerogrid/grid/gridtls"
	"github.com/zerogrid/zerogrid/node/localcluster"
)

// TestQuarantineNeedsEvidence asks a healthy replica to quarantine itself
// with no evidence and with a check it has no digest for: it refuses and
// keeps serving.
func TestQuarantineNeedsEvidence(t *testing.T) {
	lc, c := startCluster(t, 4, "kv")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for i := 0; i < 40; i++ {
		if _, err := c.Map("kv").Put(ctx, []byte(fmt.Sprint("k", i)), []byte("v")); err != nil {
			t.Fatal(err)
		}
	}
	// Only nodes may ask for a quarantine; here n1 asks n2 without evidence.
	asN1 := grpc.WithTransportCredentials(credentials.NewTLS(mustLoad(t, gridtls.LoadNode, lc.TLSDir("n1")).ClientConfig()))
	conn, err := grpc.NewClient(lc.Addr("n2"), asN1)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ic := gridpb.NewIntegrityClient(conn)
	for _, req := range []*gridpb.QuarantineRequest{
		{Partition: 1, Reason: "trust me"},
		{Partition: 1, Reason: "a check that never ran", CheckId: 12345, Index: 1},
	} {
		_, err := ic.Quarantine(ctx, req)
		if status.Code(err) != codes.FailedPrecondition || !errors.Is(gridpb.FromStatus(err), grid.ErrRefused) {
			t.Fatalf("quarantine %+v: got %v, want a refusal", req, err)
		}
		t.Logf("%s refused: %v", time.Now().Format("15:04:05.000"), err)
	}
	st, err := c.NodeStatus(ctx, lc.Addr("n2"))
	if err != nil {
		t.Fatal(err)
	}
	if q := st.Integrity.GetQuarantined(); len(q) > 0 || st.Integrity.GetQuarantines() > 0 {
		t.Fatalf("n2 quarantined %v (%d quarantines) without evidence", q, st.Integrity.GetQuarantines())
	}
	rep, err := c.Check(ctx, client.NoRepair())
	if err != nil || !rep.Clean() {
		t.Fatalf("check after refused quarantines: %+v, %v", rep, err)
	}
}

// TestRecoverLostMajority damages the Raft log of one partition on two of
// its three replicas, so both are quarantined and the partition cannot
// elect a leader; `status` says so, `recover` without --yes changes
// nothing, and `recover --yes` rebuilds the partition from the healthy
// replica: every acknowledged write is there, the partition takes writes,
// the cluster re-creates the two replicas, and the recovery is on record.
func TestRecoverLostMajority(t *testing.T) {
	const parts = 4
	const target = 2
	lc, c := startClusterConfig(t, localcluster.Config{Nodes: 3, Partitions: parts, Replicas: 3,
		ExtraArgs: []string{"--scrub-interval", "2s"}}, "kv")
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	m := c.Map("kv")
	want := map[string][]byte{}
	var targetKeys []string
	for i := 0; len(want) < 120; i++ {
		k := fmt.Sprintf("key-%04d", i)
		v := make([]byte, 64)
		rand.Read(v)
		if _, err := m.Put(ctx, []byte(k), v); err != nil {
			t.Fatal(err)
		}
		want[k] = v
		if grid.PartitionOf("kv", []byte(k), parts) == target {
			targetKeys = append(targetKeys, k)
		}
	}
	eventually(t, 30*time.Second, func() error { return replicasEqual(ctx, lc, parts, []string{"kv"}) })
	tbl, err := c.Table(ctx)
	if err != nil {
		t.Fatal(err)
	}
	keep := tbl.Partitions[target].Replicas[0]
	var damaged []string
	for _, id := range tbl.Partitions[target].Replicas {
		if id != keep {
			damaged = append(damaged, id)
		}
	}
	for _, id := range damaged {
		if err := lc.Terminate(id); err != nil {
			t.Fatal(err)
		}
	}
	for _, id := range damaged {
		flipped := 0
		for _, k := range targetKeys {
			flipped += len(flipAll(t, filepath.Join(lc.DataDir(id), "raft"), want[k]))
		}
		if flipped == 0 {
			t.Fatalf("no log record of partition %d found on %s", target, id)
		}
	}
	for _, id := range damaged {
		if err := lc.StartNode(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	addr := strings.Join(lc.Addrs(), ",")
	eventually(t, 60*time.Second, func() error {
		for _, id := range damaged {
			st, err := c.NodeStatus(ctx, lc.Addr(id))
			if err != nil {
				return err
			}
			if !slices.Contains(st.Integrity.GetQuarantined(), uint32(target)) {
				return fmt.Errorf("%s has not quarantined partition %d: %v", id, target, st.Integrity.GetQuarantined())
			}
		}
		return nil
	})
	out := runCLI(t, ctx, "status", "--addr", addr)
	if !strings.Contains(out, "LOST THEIR MAJORITY") || !strings.Contains(out, fmt.Sprintf("partition %d: 1 of 3 replicas healthy", target)) {
		t.Fatalf("status does not say partition %d lost its majority:\n%s", target, out)
	}
	pctx, pcancel := context.WithTimeout(ctx, 3*time.Second)
	_, err = m.Put(pctx, []byte(targetKeys[0]), []byte("while lost"))
	pcancel()
	if err == nil {
		t.Fatalf("a put to partition %d was acknowledged with two of three replicas quarantined", target)
	}
	// A leader that has not yet noticed it lost its quorum may take the
	// put into its log: the client says the outcome is unknown, and the
	// recovery (which keeps the survivor's whole log) may apply it.
	maybe := map[string][]byte{}
	if errors.Is(err, grid.ErrAmbiguous) {
		maybe[targetKeys[0]] = []byte("while lost")
	}
	t.Logf("put while the majority is lost: %v", err)

	// A dry run names the replica it would keep and changes nothing.
	out = runCLI(t, ctx, "recover", fmt.Sprint(target), "--addr", addr)
	if !strings.Contains(out, "dry run") || !strings.Contains(out, "would be rebuilt from "+keep) {
		t.Fatalf("recover without --yes:\n%s", out)
	}
	if now, err := c.Table(ctx); err != nil || now.Epoch != tbl.Epoch && len(now.Recoveries) > 0 {
		t.Fatalf("a dry run changed the table: %+v, %v", now, err)
	}
	out = runCLI(t, ctx, "recover", fmt.Sprint(target), "--yes", "--addr", addr)
	t.Logf("recover --yes:\n%s", out)
	if !strings.Contains(out, fmt.Sprintf("partition %d recovered from %s", target, keep)) {
		t.Fatalf("recover --yes did not report the recovery:\n%s", out)
	}

	// Every acknowledged write is readable, the partition takes writes,
	// and the cluster brings back three equal replicas.
	eventually(t, 30*time.Second, func() error {
		_, err := m.Put(ctx, []byte(targetKeys[0]+"-after"), []byte("after"))
		return err
	})
	for k, v := range want {
		got, _, err := m.Get(ctx, []byte(k))
		if err != nil || !bytes.Equal(got, v) && !bytes.Equal(got, maybe[k]) {
			t.Fatalf("after recovery %q (partition %d): %v (got %q)", k, grid.PartitionOf("kv", []byte(k), parts), err, got)
		}
	}
	eventually(t, 90*time.Second, func() error {
		now, err := c.Table(ctx)
		if err != nil {
			return err
		}
		if p := now.Partitions[target]; len(p.Replicas) != 3 || p.Moving() {
			return fmt.Errorf("partition %d replicas %v (moving %v)", target, p.Replicas, p.Moving())
		}
		for _, id := range damaged {
			st, err := c.NodeStatus(ctx, lc.Addr(id))
			if err != nil {
				return err
			}
			if len(st.Integrity.GetQuarantined()) > 0 {
				return fmt.Errorf("%s still quarantined: %v", id, st.Integrity.GetQuarantined())
			}
		}
		return replicasEqual(ctx, lc, parts, []string{"kv"})
	})
	now, err := c.Table(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(now.Recoveries) != 1 || now.Recoveries[0].Partition != target || now.Recoveries[0].From != keep ||
		now.Recoveries[0].Operator == "" || len(now.Recoveries[0].Lost) != 2 {
		t.Fatalf("recovery record: %+v", now.Recoveries)
	}
	out = runCLI(t, ctx, "status", "--addr", addr)
	if strings.Contains(out, "LOST THEIR MAJORITY") || !strings.Contains(out, fmt.Sprintf("recovered: partition %d from %s", target, keep)) {
		t.Fatalf("status after recovery:\n%s", out)
	}
	// A partition with a leader is not recovered again.
	_, err = c.RecoverPartition(ctx, target)
	if !errors.Is(err, grid.ErrRefused) {
		t.Fatalf("recovering a partition that has a leader: %v", err)
	}
	t.Logf("second recovery refused: %v", err)
}
