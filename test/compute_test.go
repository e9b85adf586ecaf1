package test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/zerogrid/zerogrid/client"
)

// TestJobSurvivesSIGKILL kills a node process while a job runs over the
// cluster: the coordinator retries the lost tasks on surviving replicas and
// the result is exact.
func TestJobSurvivesSIGKILL(t *testing.T) {
	lc, c0 := startClusterArgs(t, 8, []string{"--task-delay", "300ms"}, "events")
	c0.Close()
	// Tasks take 300 ms each so the job is still running when the node dies;
	// talk to n1 only, so n1 coordinates and n3 can be killed.
	c, err := dialCluster(context.Background(), []string{lc.Addr("n1")})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	m := c.Map("events")
	const n = 400
	for i := 0; i < n; i++ {
		k := fmt.Sprintf("e%04d", i)
		eventually(t, 10*time.Second, func() error {
			_, err := m.Put(ctx, []byte(k), []byte(fmt.Sprintf(`{"size": %d}`, i)))
			return err
		})
	}
	want := int64(n * (n - 1) / 2)
	for round := 0; round < 2; round++ {
		run, err := c.Submit(ctx, client.Job{Map: "events", Agg: "sum(v.size)", Stale: true, NoHedge: true})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := run.Next(); err != nil { // first task done: the job is under way
			t.Fatal(err)
		}
		victim := []string{"n3", "n2"}[round]
		if err := lc.Kill(victim); err != nil {
			t.Fatal(err)
		}
		res, err := run.Wait()
		if err != nil {
			t.Fatalf("job with %s killed: %v", victim, err)
		}
		var got any
		for _, g := range res.Groups {
			got = g.Value
		}
		if got != want {
			t.Fatalf("sum after killing %s = %v, want %d", victim, got, want)
		}
		t.Logf("round %d: %s killed mid-job; result exact; %d retries", round, victim, res.Retries)
		if err := lc.StartNode(ctx, victim); err != nil {
			t.Fatal(err)
		}
	}
}
