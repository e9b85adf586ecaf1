package node

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"sync/atomic"
	"time"

	"github.com/dustin/go-humanize"

	"github.com/zerogrid/zerogrid/grid"
	"github.com/zerogrid/zerogrid/grid/gridpb"
	"github.com/zerogrid/zerogrid/replication"
)

// diskGuard watches the free space of the node's data file system and
// turns writes away before it runs out: a write refused at the leader
// never enters the log, while one that met a full disk halfway (a log
// append, an engine flush, raft saving its term) would stop the replica.
type diskGuard struct {
	n        *Node
	dir      string
	reserve  int64 // configured: 0 by file system size, < 0 off
	every    time.Duration
	free     atomic.Int64
	need     atomic.Int64 // the reserve in force
	low      atomic.Bool
	floor    atomic.Bool // free under a quarter of the reserve: no log entries taken as a follower either
	refusals atomic.Uint64

	handedOff map[replication.GroupID]time.Time // leaderships handed away while low; loop goroutine only
}

func newDiskGuard(n *Node) *diskGuard {
	every := time.Second
	if n.cfg.Profile == "test" {
		every = 100 * time.Millisecond
	}
	d := &diskGuard{n: n, dir: n.cfg.DataDir, reserve: n.cfg.MinFreeDisk, every: every, handedOff: map[replication.GroupID]time.Time{}}
	d.check()
	return d
}

// loop re-reads the free space until ctx ends.
func (d *diskGuard) loop(ctx context.Context) {
	t := time.NewTicker(d.every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			d.check()
			if d.low.Load() {
				d.handOff(ctx)
			}
		}
	}
}

// reserveFor is the free space to keep on a file system of total bytes.
func reserveFor(configured int64, total uint64) int64 {
	if configured != 0 {
		return configured
	}
	return min(max(int64(total/50), 64<<20), 1<<30)
}

func (d *diskGuard) check() {
	if d.reserve < 0 {
		d.low.Store(false)
		d.floor.Store(false)
		return
	}
	avail, total, err := diskSpace(d.dir)
	if err != nil {
		return // keep the last reading
	}
	free := int64(avail)
	need := reserveFor(d.reserve, total)
	d.free.Store(free)
	d.need.Store(need)
	low := free < need
	if floor := free < need/4; !d.floor.Swap(floor) && floor {
		d.n.log.Error("data disk under a quarter of its reserve: this node takes no new log entries from its leaders until space is freed",
			"free", humanize.IBytes(uint64(free)), "reserve", humanize.IBytes(uint64(need)))
	}
	if was := d.low.Swap(low); was != low {
		if low {
			d.n.log.Error("data disk nearly full: refusing writes until space is freed (reads, deletes, lock renewals and releases go on)",
				"free", humanize.IBytes(uint64(free)), "reserve", humanize.IBytes(uint64(need)), "dir", d.dir)
		} else {
			d.n.log.Info("data disk has room again: writes accepted", "free", humanize.IBytes(uint64(free)))
		}
	}
}

// refuse returns grid.ErrDiskFull for a command that would grow the
// node's data while its disk is under the reserve.
func (d *diskGuard) refuse(cmd *gridpb.Command) error {
	if !d.low.Load() {
		return nil
	}
	switch cmd.Op.(type) {
	case *gridpb.Command_Delete, *gridpb.Command_LockRenew, *gridpb.Command_LockRelease, *gridpb.Command_Check:
		return nil
	}
	d.refusals.Add(1)
	return fmt.Errorf("%w: node %s has %s free on its data disk, under its %s reserve: writes are refused until space is freed; nothing was written",
		grid.ErrDiskFull, d.n.cfg.ID, humanize.IBytes(uint64(max(d.free.Load(), 0))), humanize.IBytes(uint64(d.need.Load())))
}

// handOffEvery spaces the leadership hand-offs of one group: when every
// replica's disk is low, leadership moves at most this often.
const handOffEvery = 30 * time.Second

// handOff hands away the leadership of every data partition this node
// leads while its disk is low: a leader here would refuse the partition's
// writes, while a peer with room takes them. The metadata leader does not
// move leadership back to a node that reports its disk low.
func (d *diskGuard) handOff(ctx context.Context) {
	h := d.n.host
	if h == nil {
		return
	}
	now := time.Now()
	for _, g := range h.Groups() {
		if g.ID() == replication.MetaGroup || !g.IsLeader() || ctx.Err() != nil {
			continue
		}
		if at, ok := d.handedOff[g.ID()]; ok && now.Sub(at) < handOffEvery {
			continue
		}
		members, err := g.Members()
		if err != nil {
			continue
		}
		// To a voter whose node has room, as its record says; none: keep it
		// (every replica would refuse the writes alike).
		i := slices.IndexFunc(members, func(m replication.Member) bool {
			if !m.Voter || m.ID == d.n.cfg.ID {
				return false
			}
			rec, ok := d.n.meta.Meta().Node(m.ID)
			return ok && rec.State == grid.StateActive && !rec.Load.DiskLow
		})
		if i < 0 {
			continue
		}
		d.handedOff[g.ID()] = now
		if err := g.TransferLeadership(members[i].ID, members[i].Addr); err != nil {
			d.n.log.Warn("data disk low: could not hand partition leadership away", "group", g.ID(), "to", members[i].ID, "err", err)
			continue
		}
		d.n.log.Info("data disk low: partition leadership handed to a peer with room", "group", g.ID(), "to", members[i].ID)
	}
	maps.DeleteFunc(d.handedOff, func(_ replication.GroupID, at time.Time) bool { return now.Sub(at) >= handOffEvery })
}

// refuseGrowth is the transport's RefuseGrowth hook: under a quarter of
// the reserve a node takes no new log entries or snapshots as a follower
// (badger, flushing a memtable into a file mapped on a full disk, dies of
// SIGBUS), so it falls behind while leaders with room commit without it.
// Between the reserve and the floor it still takes what low leaders admit
// (deletes, lock renewals), so that those commit when every node is low;
// under the floor on a majority, nothing commits until space returns.
func (d *diskGuard) refuseGrowth() error {
	if !d.floor.Load() {
		return nil
	}
	return fmt.Errorf("%w: %s free on the data disk, under a quarter of the %s reserve",
		grid.ErrDiskFull, humanize.IBytes(uint64(max(d.free.Load(), 0))), humanize.IBytes(uint64(d.need.Load())))
}

// status describes the guard for Status: free bytes, and why writes are
// refused ("" when they are not).
func (d *diskGuard) status() (free uint64, low string) {
	free = uint64(max(d.free.Load(), 0))
	if d.low.Load() {
		low = fmt.Sprintf("under the %s reserve: writes refused (%d so far)", humanize.IBytes(uint64(d.need.Load())), d.refusals.Load())
	}
	return free, low
}
