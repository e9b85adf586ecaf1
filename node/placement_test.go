package node

import (
	"testing"

	"github.com/zerogrid/zerogrid/grid"
)

// TestCostModel: identical machines keep work on the data; a Pi Zero class
// replica loses its task to a server-class node that can read the partition
// over a 100 Mbit/s link and still finish well ahead; load ranks remote
// candidates but does not by itself move data.
func TestCostModel(t *testing.T) {
	rec := func(id string, score int64, cpu float64) grid.NodeRecord {
		return grid.NodeRecord{Node: grid.Node{ID: id, Addr: id + ":1"}, State: grid.StateActive,
			Caps: grid.Capabilities{CPUScore: score, Cores: 1}, Load: grid.Load{CPU: cpu}}
	}
	const bytes = 64 << 20
	server, server2, pi := rec("s", 400_000, 0), rec("s2", 400_000, 0), rec("pi", 20_000, 0)
	if taskCost(bytes, server2, false, false)*remoteAdvantage <= taskCost(bytes, server, true, false) {
		t.Error("identical machines: data would move")
	}
	if taskCost(bytes, server, false, false)*remoteAdvantage > taskCost(bytes, pi, true, false) {
		t.Errorf("Pi replica (%.2fs) vs server over the network (%.2fs): data should move",
			taskCost(bytes, pi, true, false), taskCost(bytes, server, false, false))
	}
	busy := rec("busy", 400_000, 95)
	got := remoteExecutors([]grid.NodeRecord{busy, server, pi}, map[string]bool{"pi": true}, grid.Requirements{}, bytes)
	if len(got) != 2 || got[0].rec.ID != "s" {
		t.Errorf("remote ranking %v: want the idle server first and no replica", got)
	}
	if sz := partitionBytes([]grid.NodeRecord{{Load: grid.Load{DiskUsed: 100 << 20, Replicas: 10}}}); sz != 10<<20 {
		t.Errorf("partition size estimate %v, want 10 MiB", sz)
	}
}
