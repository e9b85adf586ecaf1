package main

import (
	"io"
	"testing"
	"time"

	"github.com/zerogrid/zerogrid/grid"
)

func table(reps ...[]string) *grid.Table {
	t := &grid.Table{Replicas: 3}
	for i, r := range reps {
		t.Partitions = append(t.Partitions, grid.Partition{ID: i, Replicas: r})
	}
	return t
}

func TestCopiedKeys(t *testing.T) {
	before := table([]string{"n1", "n2", "n3"}, []string{"n1", "n2", "n3"}, []string{"n1", "n2", "n3"})
	after := table([]string{"n4", "n2", "n3"}, []string{"n1", "n2", "n3"}, []string{"n1", "n4", "n5"})
	keys, reps, err := copiedKeys(before, after, []uint64{10, 20, 30})
	if err != nil {
		t.Fatal(err)
	}
	// Partition 0 gained n4 (10 keys), partition 2 gained n4 and n5 (2 × 30).
	if keys != 70 || reps != 3 {
		t.Errorf("copied %d keys in %d replicas, want 70 in 3", keys, reps)
	}
	if _, _, err := copiedKeys(before, after, []uint64{1}); err == nil {
		t.Error("key counts for the wrong number of partitions accepted")
	}
	if got := perSecond(70, 2*time.Second); got != 35 {
		t.Errorf("70 keys in 2 s = %v/s, want 35", got)
	}
	if got := perSecond(70, 0); got != 0 {
		t.Errorf("70 keys in no time = %v/s, want 0", got)
	}
}

func TestMoveTracker(t *testing.T) {
	m := newMoveTracker()
	moving := func(learner, leaving string) *grid.Table {
		t := table([]string{"n1", "n2", "n3"}, []string{"n1", "n2", "n3"})
		t.Partitions[0].Learner, t.Partitions[0].Leaving = learner, leaving
		return t
	}
	s := time.Second
	m.observe(0, moving("", ""))
	m.observe(1*s, moving("n4", "n1"))
	m.observe(2*s, moving("n4", "n1"))
	m.observe(3*s, moving("n5", "n2")) // one move ended and the next began between polls
	m.observe(5*s, moving("", ""))
	got := m.spans()
	want := []moveSpan{
		{Partition: 0, Add: "n4", Remove: "n1", Start: 1 * s, End: 3 * s},
		{Partition: 0, Add: "n5", Remove: "n2", Start: 3 * s, End: 5 * s},
	}
	if len(got) != len(want) {
		t.Fatalf("spans %+v, want %+v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("span %d = %+v, want %+v", i, got[i], want[i])
		}
	}
}

func TestCatchUpTrackerAndStages(t *testing.T) {
	s := time.Second
	c := newCatchUpTracker(map[string]map[int]uint64{"n1": {0: 50}, "n2": {0: 50}})
	c.observe(1*s, map[string]map[int]uint64{"n1": {0: 51}, "n2": {0: 51}})                // n3 not open yet
	c.observe(2*s, map[string]map[int]uint64{"n1": {0: 51}, "n2": {0: 51}, "n3": {0: 0}})  // opened, nothing applied
	c.observe(3*s, map[string]map[int]uint64{"n1": {0: 52}, "n2": {0: 51}, "n3": {0: 51}}) // behind n1
	c.observe(4*s, map[string]map[int]uint64{"n1": {0: 52}, "n2": {0: 52}, "n3": {0: 52}})
	if len(c.seen) != 1 {
		t.Fatalf("tracked %v, want only n3's new replica", c.seen)
	}
	got := *c.seen[copyKey{"n3", 0}]
	if got != (catchUp{Opened: 2 * s, CaughtUp: 4 * s}) {
		t.Errorf("n3 p0: %+v, want opened at 2s, caught up at 4s", got)
	}

	cus := map[copyKey]catchUp{{"n3", 0}: got}
	spans := []moveSpan{
		{Partition: 0, Add: "n3", Remove: "n9", Start: 1 * s, End: 6 * s},
		{Partition: 1, Add: "n3", Start: 1 * s, End: 2 * s}, // never seen open: not timed
		{Partition: 0, Remove: "n9", Start: 1 * s, End: 2 * s},
	}
	wait, cp, finish, n := moveStages(spans, cus)
	if n != 1 || wait != 1*s || cp != 2*s || finish != 2*s {
		t.Errorf("stages: %d timed, wait %v copy %v finish %v; want 1, 1s 2s 2s", n, wait, cp, finish)
	}
	if med, most := durStats([]time.Duration{3 * s, 1 * s, 2 * s}); med != 2*s || most != 3*s {
		t.Errorf("median %v, max %v; want 2s, 3s", med, most)
	}
}

func TestTicksSince(t *testing.T) {
	// 1 went on (+5), 2 died (its last ticks are not counted), 3 is new (all 7).
	if got := ticksSince(map[int]int64{1: 10, 2: 20}, map[int]int64{1: 15, 3: 7}); got != 12 {
		t.Errorf("ticksSince = %d, want 12", got)
	}
}

func TestCommissionFlags(t *testing.T) {
	c, err := parseFlags([]string{"-idle-scale", "-idle-scale-replicas", "8, 32", "-idle-scale-profiles", "small"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if len(c.commission.idleReplicas) != 2 || c.commission.idleReplicas[1] != 32 || c.commission.idleProfiles[0] != "small" {
		t.Errorf("replicas %v profiles %v", c.commission.idleReplicas, c.commission.idleProfiles)
	}
	for _, args := range [][]string{
		{"-idle-scale", "-idle-scale-replicas", "0"},
		{"-idle-scale", "-idle-scale-profiles", "huge"},
		{"-commission", "-idle-scale"},
		{"-commission", "-commission-value-bytes", "10"},
	} {
		if _, err := parseFlags(args, io.Discard); err == nil {
			t.Errorf("%v accepted", args)
		}
	}
}
