package node

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/zerogrid/zerogrid/grid/gridpb"
	"github.com/zerogrid/zerogrid/replication"
)

// integrity keeps this node's replicas honest: it scrubs every local
// partition in the background at a gentle rate (stored entries and Raft
// log entries against their CRC32Cs) and quarantines a replica found
// corrupt by the scrub, a read, an apply or a cross-replica check. A
// quarantined replica stops serving and voting at once; the metadata leader
// then has the partition's leader remove it from the Raft configuration,
// after which this node drops its state and the replica comes back as a
// learner fed from the leader's snapshot (see manager.advance and
// Node.syncGroups).
type integrity struct {
	n      *Node
	events chan corruptEvent

	// mu serialises quarantines, so a replica is verified and closed once.
	mu sync.Mutex

	scrubPasses       atomic.Uint64
	corruptEntries    atomic.Uint64
	corruptLogEntries atomic.Uint64
	quarantines       atomic.Uint64
	rebuilds          atomic.Uint64
}

type corruptEvent struct {
	group  replication.GroupID
	reason string
}

func newIntegrity(n *Node) *integrity {
	return &integrity{n: n, events: make(chan corruptEvent, 64)}
}

// onCorrupt is the host's OnCorrupt callback: it must not block (it may run
// on an apply goroutine). An event lost to a full queue is found by the
// sweep, which looks at every group's state.
func (in *integrity) onCorrupt(g replication.GroupID, reason string) {
	select {
	case in.events <- corruptEvent{g, reason}:
	default:
	}
}

// loop quarantines replicas reported corrupt.
func (in *integrity) loop(ctx context.Context) {
	sweep := time.NewTicker(time.Second)
	defer sweep.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case ev := <-in.events:
			_ = in.quarantine(ctx, ev.group, ev.reason, nil) // logged; the sweep below retries
		case <-sweep.C:
			for _, g := range in.n.host.Groups() {
				if reason, bad := g.Quarantined(); bad {
					_ = in.quarantine(ctx, g.ID(), reason, nil) // logged; retried next sweep
				}
			}
		}
	}
}

// scrubLoop verifies every local data partition once per scrub interval.
func (in *integrity) scrubLoop(ctx context.Context) {
	interval := in.n.cfg.scrubInterval()
	if interval < 0 {
		return
	}
	pace := pacer(in.n.cfg.scrubRate())
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(interval):
		}
		for _, g := range in.n.host.Groups() {
			if g.ID() == replication.MetaGroup {
				continue
			}
			if _, bad := g.Quarantined(); bad {
				continue
			}
			res, err := in.n.host.Scrub(ctx, g.ID(), pace)
			if err != nil {
				if ctx.Err() != nil {
					return
				}
				continue // the group closed meanwhile
			}
			if res.BadEntries+res.BadLogEntries > 0 {
				_ = in.quarantine(ctx, g.ID(), "scrub: "+res.FirstBad, &res) // logged
			}
		}
		in.scrubPasses.Add(1)
	}
}

// pacer returns a scrub pace function that keeps reads near rate bytes/s.
func pacer(rate int64) func(context.Context, int) error {
	var acc int64
	return func(ctx context.Context, n int) error {
		acc += int64(n)
		if acc < 64<<10 {
			return nil
		}
		d := time.Duration(acc) * time.Second / time.Duration(rate)
		acc = 0
		select {
		case <-time.After(d):
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func noPace(ctx context.Context, _ int) error { return nil }

// quarantine marks a running replica quarantined and shuts it down. The
// report counts every damaged entry: scanned is the full scrub that found
// the damage, or nil to verify the replica in full first.
func (in *integrity) quarantine(ctx context.Context, id replication.GroupID, reason string, scanned *replication.ScrubResult) error {
	in.mu.Lock()
	defer in.mu.Unlock()
	if _, open := in.n.host.Group(id); !open {
		return nil
	}
	if scanned == nil {
		if res, err := in.n.host.Scrub(ctx, id, noPace); err == nil {
			scanned = &res
		}
	}
	if scanned != nil {
		in.corruptEntries.Add(scanned.BadEntries)
		in.corruptLogEntries.Add(scanned.BadLogEntries)
		reason = fmt.Sprintf("%s; full scan: %d of %d stored entries and %d of %d raft log entries fail their checksums",
			reason, scanned.BadEntries, scanned.Entries, scanned.BadLogEntries, scanned.LogEntries)
	}
	// The durable mark must land even if the caller stopped waiting.
	if err := in.n.host.Quarantine(context.WithoutCancel(ctx), id, reason); err != nil {
		in.n.log.Error("quarantine partition replica", "partition", uint32(id), "err", err)
		return fmt.Errorf("node: quarantine partition %d: %w", uint32(id), err)
	}
	in.quarantines.Add(1)
	in.n.log.Error("partition replica quarantined; it will be rebuilt from the leader's snapshot",
		"partition", uint32(id), "reason", reason)
	return nil
}

// quarantined lists this node's quarantined partitions.
func (in *integrity) quarantined() []uint32 {
	var out []uint32
	onDisk, _ := in.n.host.OnDisk()
	for _, g := range onDisk {
		if g == replication.MetaGroup {
			continue
		}
		if _, bad := in.n.host.QuarantineReason(g); bad {
			out = append(out, uint32(g))
		}
	}
	slices.Sort(out)
	return out
}

func (in *integrity) stats() *gridpb.IntegrityStats {
	return &gridpb.IntegrityStats{
		ScrubPasses: in.scrubPasses.Load(), CorruptEntries: in.corruptEntries.Load(), CorruptLogEntries: in.corruptLogEntries.Load(),
		Quarantines: in.quarantines.Load(), Rebuilds: in.rebuilds.Load(), Quarantined: in.quarantined(),
	}
}

// openOrRebuild opens partition g for syncGroups. A quarantined replica
// stays closed while the table still counts it as a voter (the partition's
// leader removes it first: a voter must never lose its log); once it is no
// longer in the partition's replicas, its state and log are dropped and it
// starts empty, to be fed a snapshot by the leader.
func (n *Node) openOrRebuild(ctx context.Context, g replication.GroupID, replicas []string) error {
	if reason, bad := n.host.QuarantineReason(g); bad {
		if slices.Contains(replicas, n.cfg.ID) {
			return nil // waits for the metadata leader to remove it from the group
		}
		n.log.Warn("rebuilding quarantined partition replica", "partition", uint32(g), "reason", reason)
		if err := n.host.RemoveGroup(ctx, g); err != nil {
			return err
		}
		n.integrity.rebuilds.Add(1)
	}
	_, err := n.host.OpenGroup(ctx, g, replication.KindData, nil)
	if errors.Is(err, replication.ErrGroupExists) || errors.Is(err, replication.ErrQuarantined) {
		return nil
	}
	return err
}
