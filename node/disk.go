package node

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/dustin/go-humanize"

	"github.com/zerogrid/zerogrid/grid"
	"github.com/zerogrid/zerogrid/grid/gridpb"
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
	refusals atomic.Uint64
}

func newDiskGuard(n *Node) *diskGuard {
	every := time.Second
	if n.cfg.Profile == "test" {
		every = 100 * time.Millisecond
	}
	d := &diskGuard{n: n, dir: n.cfg.DataDir, reserve: n.cfg.MinFreeDisk, every: every}
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

// status describes the guard for Status: free bytes, and why writes are
// refused ("" when they are not).
func (d *diskGuard) status() (free uint64, low string) {
	free = uint64(max(d.free.Load(), 0))
	if d.low.Load() {
		low = fmt.Sprintf("under the %s reserve: writes refused (%d so far)", humanize.IBytes(uint64(d.need.Load())), d.refusals.Load())
	}
	return free, low
}
