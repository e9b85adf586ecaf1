package node

import (
	"context"
	"time"

	"github.com/zerogrid/zerogrid/replication"
)

// sweepBatch bounds the keys one expiry command deletes: sweeping stays a
// trickle of small Raft entries beside the foreground writes.
const sweepBatch = 256

// sweepLoop deletes expired keys through Raft: every interval, each
// partition this node leads proposes one bounded batch of keys that its
// expiry index says are due. Reads already hide expired keys; the sweep
// reclaims their space and tells watchers.
func (n *Node) sweepLoop(ctx context.Context) {
	t := time.NewTicker(n.cfg.sweepInterval())
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		for _, g := range n.host.Groups() {
			if g.ID() == replication.MetaGroup || !g.IsLeader() {
				continue
			}
			sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			if _, err := g.SweepExpired(sctx, sweepBatch); err != nil && ctx.Err() == nil {
				n.log.Debug("expiry sweep failed", "group", g.ID().String(), "err", err)
			}
			cancel()
		}
	}
}
