package node

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"

	"github.com/zerogrid/zerogrid/grid"
	"github.com/zerogrid/zerogrid/grid/gridpb"
	"github.com/zerogrid/zerogrid/replication"
)

// The task cost model. It is deliberately simple: a task's time is the
// partition's bytes over the executor's scan speed (its CPU score scaled by
// the share of its cores not busy), plus, when the executor holds no replica
// it can read, the bytes over the network. Scores and loads come from the
// node records (capabilities from the join probe, load from reports).
const (
	// bytesPerScoreUnit turns a CPU score (ops/ms of the probe's integer
	// loop) into scan-and-filter bytes per second: a score of 400k (one
	// amd64 core) ≈ 40 MB/s through a Starlark filter.
	bytesPerScoreUnit = 100
	// networkBytesPerSec is the link the model assumes between nodes:
	// USB-class 100 Mbit/s, the Pi Zero's.
	networkBytesPerSec = 12.5e6
	// remoteAdvantage: data moves to a non-replica only if that is at least
	// this many times faster than the best replica able to run the task.
	remoteAdvantage = 2
	// defaultPartitionBytes stands in for a partition's size before any
	// node has reported its disk use.
	defaultPartitionBytes = 1 << 20
)

// executor is a node that may run one partition's task.
type executor struct {
	rec    grid.NodeRecord
	local  bool // holds a replica it can read for this job's consistency
	cost   float64
	detail string
}

// scanSpeed is the bytes per second a node scans, by its CPU score and,
// with busy, the share of its cores its last report left free. Whether to
// move data is decided on capability alone (a momentary load spike must
// not send a partition over the network); load ranks the candidates.
func scanSpeed(rec grid.NodeRecord, busy bool) float64 {
	score := rec.Caps.CPUScore
	if score <= 0 {
		score = 100_000 // not measured: assume a modest core
	}
	free := 1.0
	if busy {
		cores := float64(max(rec.Caps.Cores, 1))
		free = 1 - min(rec.Load.CPU/(100*cores), 0.9)
	}
	return float64(score) * bytesPerScoreUnit * free
}

// partitionBytes estimates a partition's size from its replicas' reports:
// disk used over replicas hosted, the best guess without per-partition
// statistics.
func partitionBytes(reps []grid.NodeRecord) float64 {
	best := 0.0
	for _, r := range reps {
		if r.Load.Replicas > 0 && r.Load.DiskUsed > 0 {
			best = max(best, float64(r.Load.DiskUsed)/float64(r.Load.Replicas))
		}
	}
	if best == 0 {
		return defaultPartitionBytes
	}
	return best
}

// taskCost estimates, in seconds, a task over bytes on e.
func taskCost(bytes float64, e grid.NodeRecord, local, busy bool) float64 {
	c := bytes / scanSpeed(e, busy)
	if !local {
		c += bytes / networkBytesPerSec
	}
	return c
}

// usable reports whether a node may run tasks at all.
func usable(r grid.NodeRecord) bool {
	return r.State == grid.StateActive || r.State == grid.StateDraining || r.State == grid.StateSuspect
}

// remoteExecutors ranks the nodes that meet req and hold no replica of the
// partition by estimated cost, cheapest first.
func remoteExecutors(recs []grid.NodeRecord, reps map[string]bool, req grid.Requirements, bytes float64) []executor {
	var out []executor
	for _, r := range recs {
		if reps[r.ID] || !usable(r) || req.Check(r) != nil {
			continue
		}
		out = append(out, executor{rec: r, cost: taskCost(bytes, r, false, true)})
	}
	sort.SliceStable(out, func(i, j int) bool {
		if out[i].cost != out[j].cost {
			return out[i].cost < out[j].cost
		}
		return out[i].rec.ID < out[j].rec.ID
	})
	return out
}

// excluded explains why each replica does not meet the requirements.
func excluded(reps []string, byID map[string]grid.NodeRecord, req grid.Requirements) string {
	var why []string
	for _, id := range reps {
		r, ok := byID[id]
		switch {
		case !ok:
			why = append(why, id+": no record")
		case req.Check(r) != nil:
			why = append(why, id+": "+req.Check(r).Error())
		}
	}
	return strings.Join(why, "; ")
}

func requirementsFromSpec(r *gridpb.Requirements) grid.Requirements {
	if r == nil {
		return grid.Requirements{}
	}
	return grid.Requirements{Labels: r.Labels, Arch: r.Arch, MinRAM: r.MinRamBytes, MinCPUScore: r.MinCpuScore}
}

// eachRemote feeds fn the entries of partition p of a map, read page by page
// from the partition's replicas over the network (the leader for a
// linearizable job). It returns the bytes received and the replica read.
// Each page is a consistent read; the partition as a whole is not read from
// one snapshot, unlike a local task.
func (c *computeService) eachRemote(ctx context.Context, p int, job *gridpb.JobSpec, fn func(key, value []byte) error) (int64, string, error) {
	t := c.s.n.table()
	if p < 0 || p >= len(t.Partitions) {
		return 0, "", fmt.Errorf("%w: %d", grid.ErrBadPartition, p)
	}
	var addrs []string
	for _, id := range t.Partitions[p].Replicas {
		if nd, ok := t.Node(id); ok {
			addrs = append(addrs, nd.Addr)
		}
	}
	var received int64
	var after []byte
	var lastErr error = grid.ErrNoLeader
	from := ""
	next := "" // the leader a replica pointed to
	for tries := 0; len(addrs) > 0 && tries < 3*len(addrs)+3; tries++ {
		addr := next
		if addr == "" {
			addr = addrs[tries%len(addrs)]
		}
		next = ""
		cc, err := c.s.n.conns.get(addr)
		if err != nil {
			return received, from, err
		}
		stream, err := gridpb.NewKVClient(cc).Scan(ctx, &gridpb.ScanRequest{
			Map: job.Map, Partition: uint32(p), Prefix: job.Prefix, StartAfter: after, Limit: 1000, Consistency: job.Consistency,
		})
		var page *gridpb.ScanResponse
		if err == nil {
			page, err = stream.Recv()
			for err == nil { // drain the stream (one page per call)
				_, err = stream.Recv()
			}
			if errors.Is(err, io.EOF) {
				err = nil
			}
		}
		if err = gridpb.FromStatus(err); err != nil {
			lastErr = err
			var nl *grid.NotLeaderError
			if errors.As(err, &nl) && nl.LeaderAddr != "" && nl.LeaderAddr != addr {
				next = nl.LeaderAddr
			}
			if ctx.Err() != nil || fatalJobErr(err) {
				return received, from, err
			}
			continue
		}
		from = addr
		for _, e := range page.Entries {
			if replication.Checksum(e.Value) != e.Crc {
				return received, from, fmt.Errorf("%w: %q read from %s", grid.ErrChecksum, e.Key, addr)
			}
			received += int64(len(e.Key) + len(e.Value))
			if err := fn(e.Key, e.Value); err != nil {
				return received, from, err
			}
		}
		if !page.More || len(page.Entries) == 0 {
			return received, from, nil
		}
		after = page.Entries[len(page.Entries)-1].Key
	}
	return received, from, lastErr
}
