package replication

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/zerogrid/zerogrid/grid/gridpb"
)

// A linearizable scan over more expired-but-unswept keys than one round
// expires deletes them all through the log and returns the live ones.
func TestLinearizableScanExpiresManyKeysInLog(t *testing.T) {
	c := newTestCluster(t, 3, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var ops []*gridpb.TxnWrite
	for i := range 3 * maxExpireInRead {
		ops = append(ops, &gridpb.TxnWrite{Key: []byte(fmt.Sprintf("dead-%04d", i)), Value: []byte("x"), TtlNanos: int64(20 * time.Millisecond)})
		if len(ops) == 100 {
			if _, err := c.leader(0).Propose(ctx, &gridpb.Command{LeaderTime: time.Now().UnixNano(), Op: &gridpb.Command_Txn{Txn: &gridpb.TxnOp{Map: "m", ThenOps: ops}}}); err != nil {
				t.Fatal(err)
			}
			ops = nil
		}
	}
	for i := range 5 {
		c.putRetry(0, fmt.Sprintf("live-%d", i), "v", 9, uint64(i+1))
	}
	time.Sleep(50 * time.Millisecond) // the TTL runs out (the sweeper is not running here)
	out, more, _, err := c.leader(0).Scan(ctx, "m", nil, nil, 100, 1<<20, true)
	if err != nil || more || len(out) != 5 {
		t.Fatalf("scan: %d entries, more %v, %v; want the 5 live ones", len(out), more, err)
	}
	for id, eng := range c.engs {
		c.waitApplied(id, 0, c.leader(0).Applied())
		if n := countPrefixEngine(t, eng, string(mapPrefix(0, "m"))); n != 5 {
			t.Fatalf("%s still stores %d keys", id, n)
		}
	}
}
