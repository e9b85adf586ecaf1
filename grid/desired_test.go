package grid

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite testdata/placement/*.golden from the current output")

const goldenParts = 64

// rec builds an active amd64 node with a fast disk. opts adjust it.
func rec(id string, opts ...func(*NodeRecord)) NodeRecord {
	r := NodeRecord{
		Node:  Node{ID: id, Addr: "10.0.0." + strings.TrimPrefix(id, "n") + ":7100"},
		State: StateActive,
		Caps: Capabilities{
			Arch: "amd64", OS: "linux", Cores: 4, CPUScore: 90000,
			RAMTotal: 8 << 30, RAMFree: 6 << 30, DiskFree: 100 << 30,
			FsyncP50: 400 * time.Microsecond, FsyncP99: 2 * time.Millisecond, Version: "0.1.0",
		},
	}
	for _, o := range opts {
		o(&r)
	}
	return r
}

func zone(z string) func(*NodeRecord) {
	return func(r *NodeRecord) { label("zone", z)(r) }
}

func label(k, v string) func(*NodeRecord) {
	return func(r *NodeRecord) {
		if r.Labels == nil {
			r.Labels = map[string]string{}
		}
		r.Labels[k] = v
	}
}

func state(s NodeState) func(*NodeRecord) { return func(r *NodeRecord) { r.State = s } }

func fsync(p99 time.Duration) func(*NodeRecord) {
	return func(r *NodeRecord) { r.Caps.FsyncP50, r.Caps.FsyncP99 = p99/4, p99 }
}

func disk(b uint64) func(*NodeRecord) { return func(r *NodeRecord) { r.Caps.DiskFree = b } }

func piZero(r *NodeRecord) {
	r.Caps.Arch, r.Caps.GOARM, r.Caps.Cores, r.Caps.CPUScore = "arm", "6", 1, 9000
	r.Caps.RAMTotal, r.Caps.RAMFree = 512<<20, 300<<20
	r.Caps.FsyncP50, r.Caps.FsyncP99 = 4*time.Millisecond, 30*time.Millisecond
	r.Caps.DiskFree = 28 << 30
}

func names(prefix string, from, to int, opts ...func(*NodeRecord)) []NodeRecord {
	var out []NodeRecord
	for i := from; i <= to; i++ {
		out = append(out, rec(fmt.Sprintf("%s%d", prefix, i), opts...))
	}
	return out
}

func withState(nodes []NodeRecord, id string, s NodeState) []NodeRecord {
	out := slices.Clone(nodes)
	for i := range out {
		if out[i].ID == id {
			out[i].State = s
		}
	}
	return out
}

func mustDesired(t *testing.T, nodes []NodeRecord, current *Table, pol Policy) *Plan {
	t.Helper()
	plan, err := Desired(nodes, current, pol)
	if err != nil {
		t.Fatalf("Desired: %v", err)
	}
	return plan
}

func fresh(t *testing.T, nodes []NodeRecord) *Table {
	t.Helper()
	pol := DefaultPolicy()
	pol.Partitions = goldenParts
	return mustDesired(t, nodes, nil, pol).Table
}

// scenario is one golden placement case. want lets a scenario state facts a
// careless -update would otherwise bury in the golden file.
type scenario struct {
	name, about string
	nodes       []NodeRecord
	current     func(t *testing.T) *Table // nil: a new cluster
	policy      func(*Policy)
	want        func(t *testing.T, plan *Plan)
}

func zones6() []NodeRecord {
	return []NodeRecord{
		rec("n1", zone("a")), rec("n2", zone("a")),
		rec("n3", zone("b")), rec("n4", zone("b")),
		rec("n5", zone("c")), rec("n6", zone("c")),
	}
}

func scenarios() []scenario {
	three := names("n", 1, 3)
	five := names("n", 1, 5)
	return []scenario{
		{
			name: "fresh-3", about: "a new cluster of three nodes: every node holds every partition",
			nodes: three,
			want: func(t *testing.T, plan *Plan) {
				s := plan.Stats()
				for _, id := range []string{"n1", "n2", "n3"} {
					if s.Replicas[id] != goldenParts {
						t.Errorf("%s holds %d replicas, want all %d", id, s.Replicas[id], goldenParts)
					}
				}
				if plan.Table.Epoch != 1 {
					t.Errorf("epoch %d, want 1", plan.Table.Epoch)
				}
			},
		},
		{
			name: "grow-3-to-5", about: "two empty nodes join three full ones",
			nodes:   five,
			current: func(t *testing.T) *Table { return fresh(t, three) },
			want: func(t *testing.T, plan *Plan) {
				s := plan.Stats()
				if float64(s.Moved) > 1.3*float64(s.Ideal) {
					t.Errorf("moved %d replicas, ideal %d: more than 1.3x", s.Moved, s.Ideal)
				}
				if s.Ideal < 70 || s.Ideal > 80 { // 3×64 replicas, 2/5 of them belong on the new nodes
					t.Errorf("ideal %d, expected about 77", s.Ideal)
				}
				for _, id := range []string{"n4", "n5"} {
					if s.Replicas[id] < 38 {
						t.Errorf("new node %s holds %d replicas, below its share of 38.4", id, s.Replicas[id])
					}
				}
			},
		},
		{
			name: "shrink-5-to-4", about: "n5 is removed; its replicas go to the four others",
			nodes: withState(five, "n5", StateRemoved),
			current: func(t *testing.T) *Table {
				return mustDesired(t, five, fresh(t, three), DefaultPolicy()).Table
			},
			want: func(t *testing.T, plan *Plan) {
				s := plan.Stats()
				if s.Replicas["n5"] != 0 {
					t.Errorf("removed n5 still holds %d replicas", s.Replicas["n5"])
				}
				if _, ok := plan.Table.Node("n5"); ok {
					t.Error("removed n5 still listed in the table")
				}
				if float64(s.Moved) > 1.3*float64(s.Ideal) {
					t.Errorf("moved %d replicas, ideal %d", s.Moved, s.Ideal)
				}
			},
		},
		{
			name: "zone-loss", about: "three zones of two nodes; zone c dies and its replicas return over zones a and b",
			nodes: withState(withState(zones6(), "n5", StateDead), "n6", StateDead),
			current: func(t *testing.T) *Table {
				tbl := fresh(t, zones6())
				for _, p := range tbl.Partitions { // before the loss: one replica per zone
					if zs := zonesOf(zones6(), p.Replicas); len(zs) != 3 {
						t.Fatalf("fresh partition %d spans zones %v", p.ID, zs)
					}
				}
				return tbl
			},
			want: func(t *testing.T, plan *Plan) {
				for _, p := range plan.Table.Partitions {
					if zs := zonesOf(zones6(), p.Replicas); len(zs) != 2 {
						t.Errorf("partition %d spans zones %v, want both a and b", p.ID, zs)
					}
				}
			},
		},
		{
			name: "drain-n2", about: "n2 drains: it must end with no replica",
			nodes:   withState(five, "n2", StateDraining),
			current: func(t *testing.T) *Table { return fresh(t, five) },
			want: func(t *testing.T, plan *Plan) {
				if got := plan.Table.PartitionsOf("n2"); len(got) != 0 {
					t.Errorf("draining n2 keeps partitions %v", got)
				}
				s := plan.Stats()
				if held := len(fresh(t, five).PartitionsOf("n2")); s.Removed < held || float64(s.Moved) > 1.3*float64(held) {
					t.Errorf("moved %d and removed %d replicas; n2 held %d", s.Moved, s.Removed, held)
				}
			},
		},
		{
			name: "dead-n3", about: "n3 is declared dead: its replicas are recreated on the survivors",
			nodes:   withState(five, "n3", StateDead),
			current: func(t *testing.T) *Table { return fresh(t, five) },
			want: func(t *testing.T, plan *Plan) {
				if got := plan.Table.PartitionsOf("n3"); len(got) != 0 {
					t.Errorf("dead n3 keeps partitions %v", got)
				}
			},
		},
		{
			name: "suspect-n3", about: "n3 is suspect: it keeps its replicas but gets no new ones, and leads none",
			nodes:   withState(five, "n3", StateSuspect),
			current: func(t *testing.T) *Table { return fresh(t, five) },
			want: func(t *testing.T, plan *Plan) {
				before := fresh(t, five)
				if held, kept := len(before.PartitionsOf("n3")), len(plan.Table.PartitionsOf("n3")); kept != held {
					t.Errorf("suspect n3 keeps %d of its %d replicas", kept, held)
				}
				for _, p := range plan.Table.PartitionsOf("n3") {
					if !slices.Contains(before.Partitions[p].Replicas, "n3") {
						t.Errorf("suspect n3 received partition %d", p)
					}
					if plan.Table.Partitions[p].Leader == "n3" {
						t.Errorf("suspect n3 preferred as leader of partition %d", p)
					}
				}
			},
		},
		{
			name: "mixed-arch", about: "three amd64 servers and three Pi Zeros (arm, GOARM=6, slow SD cards)",
			nodes: append(names("n", 1, 3), names("n", 4, 6, piZero)...),
			want: func(t *testing.T, plan *Plan) {
				s := plan.Stats()
				for _, id := range []string{"n4", "n5", "n6"} {
					if s.Replicas[id] == 0 {
						t.Errorf("arm node %s holds nothing", id)
					}
				}
				for _, p := range plan.Table.Partitions {
					if l := plan.Table.Partitions[p.ID].Leader; l > "n3" && slices.ContainsFunc(p.Replicas, func(r string) bool { return r <= "n3" }) {
						t.Errorf("partition %d led by Pi %s although a server holds a replica", p.ID, l)
					}
				}
			},
		},
		{
			name: "compute-only", about: "n5 and n6 are labelled storage=false: they hold nothing",
			nodes: append(names("n", 1, 4), names("n", 5, 6, label("storage", "false"))...),
			want: func(t *testing.T, plan *Plan) {
				s := plan.Stats()
				if s.Replicas["n5"]+s.Replicas["n6"] != 0 {
					t.Errorf("compute-only nodes hold %d and %d replicas", s.Replicas["n5"], s.Replicas["n6"])
				}
				if len(plan.Excluded) != 2 {
					t.Errorf("excluded %v", plan.Excluded)
				}
			},
		},
		{
			name: "low-disk", about: "n5 has 1 GiB free, below the 4 GiB minimum: it holds nothing",
			nodes:  append(names("n", 1, 4), rec("n5", disk(1<<30))),
			policy: func(p *Policy) { p.MinDiskFree = 4 << 30 },
			want: func(t *testing.T, plan *Plan) {
				if got := plan.Table.PartitionsOf("n5"); len(got) != 0 {
					t.Errorf("n5 with too little disk holds %v", got)
				}
			},
		},
		{
			name: "leader-fsync", about: "five disks from fast to slow: leaders go to the fastest replica",
			nodes: []NodeRecord{
				rec("n1", fsync(40*time.Millisecond)), rec("n2", fsync(1*time.Millisecond)),
				rec("n3", fsync(20*time.Millisecond)), rec("n4", fsync(5*time.Millisecond)),
				rec("n5", fsync(10*time.Millisecond)),
			},
			want: func(t *testing.T, plan *Plan) {
				nodes := map[string]time.Duration{"n1": 40, "n2": 1, "n3": 20, "n4": 5, "n5": 10}
				for _, p := range plan.Table.Partitions {
					best := p.Replicas[0]
					for _, r := range p.Replicas {
						if nodes[r] < nodes[best] {
							best = r
						}
					}
					if p.Leader != best {
						t.Errorf("partition %d: leader %s, fastest replica %s", p.ID, p.Leader, best)
					}
				}
			},
		},
	}
}

func zonesOf(nodes []NodeRecord, ids []string) []string {
	var zs []string
	for _, id := range ids {
		for _, n := range nodes {
			if n.ID == id && !slices.Contains(zs, n.Labels["zone"]) {
				zs = append(zs, n.Labels["zone"])
			}
		}
	}
	sort.Strings(zs)
	return zs
}

func TestDesiredGolden(t *testing.T) {
	for _, sc := range scenarios() {
		t.Run(sc.name, func(t *testing.T) {
			pol := DefaultPolicy()
			var current *Table
			if sc.current != nil {
				current = sc.current(t)
			} else {
				pol.Partitions = goldenParts
			}
			if sc.policy != nil {
				sc.policy(&pol)
			}
			plan := mustDesired(t, sc.nodes, current, pol)
			checkPlan(t, sc.nodes, current, pol, plan)
			if sc.want != nil {
				sc.want(t, plan)
			}
			got := render(sc, pol, current, plan)
			path := filepath.Join("testdata", "placement", sc.name+".golden")
			if *update {
				if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run go test ./grid -run TestDesiredGolden -update to create it)", err)
			}
			if got != string(want) {
				t.Errorf("placement differs from %s (rerun with -update if the change is intended):\n%s", path, lineDiff(string(want), got))
			}
		})
	}
}

// checkPlan asserts what must hold for any plan, independently of the
// golden files.
func checkPlan(t *testing.T, nodes []NodeRecord, current *Table, pol Policy, plan *Plan) {
	t.Helper()
	tbl := plan.Table
	if err := tbl.Validate(); err != nil {
		t.Fatalf("desired table invalid: %v", err)
	}
	parts := pol.Partitions
	if current != nil {
		parts = len(current.Partitions)
	}
	if tbl.NumPartitions() != parts || tbl.Replicas != pol.Replicas {
		t.Fatalf("table has %d partitions × %d replicas, want %d × %d", tbl.NumPartitions(), tbl.Replicas, parts, pol.Replicas)
	}
	byID := map[string]NodeRecord{}
	for _, n := range nodes {
		byID[n.ID] = n
	}
	eligible := map[string]bool{}
	zoneOf := map[string]string{}
	elZones := map[string]bool{}
	for _, n := range nodes {
		z := n.Labels["zone"]
		if z == "" {
			z = "node:" + n.ID
		}
		zoneOf[n.ID] = z
		if n.State == StateActive && n.Labels["storage"] != "false" && n.Caps.DiskFree >= pol.MinDiskFree {
			eligible[n.ID] = true
			elZones[z] = true
		}
	}
	count := map[string]int{}
	kept := 0
	for _, p := range tbl.Partitions {
		if len(p.Replicas) != pol.Replicas {
			t.Errorf("partition %d has %d replicas %v, want %d", p.ID, len(p.Replicas), p.Replicas, pol.Replicas)
		}
		zs := map[string]int{}
		for _, r := range p.Replicas {
			count[r]++
			zs[zoneOf[r]]++
			if eligible[r] {
				continue
			}
			// Only a suspect node, or one short of disk, may keep what it had.
			n := byID[r]
			had := current != nil && slices.Contains(current.Partitions[p.ID].Replicas, r)
			if !had || !(n.State == StateSuspect || n.State == StateActive) || n.Labels["storage"] == "false" {
				t.Errorf("partition %d placed on ineligible %s (%s)", p.ID, r, n.State)
			}
			kept++
		}
		if want := min(len(elZones), pol.Replicas); len(zs) < want {
			t.Errorf("partition %d spans %d zones %v, want at least %d", p.ID, len(zs), zs, want)
		}
		if p.Leader != p.Replicas[0] {
			t.Errorf("partition %d: leader %q is not listed first in %v", p.ID, p.Leader, p.Replicas)
		}
		for _, r := range p.Replicas {
			if eligible[r] && byID[r].Caps.FsyncP99 > 0 && byID[p.Leader].Caps.FsyncP99 > byID[r].Caps.FsyncP99*3/2+100*time.Microsecond {
				t.Errorf("partition %d: leader %s (p99 %v) much slower than replica %s (p99 %v)",
					p.ID, p.Leader, byID[p.Leader].Caps.FsyncP99, r, byID[r].Caps.FsyncP99)
			}
		}
	}
	// Bounded load: when no zone rule skews the shares, every node holds at
	// most ⌈Load × average⌉ replicas, computed here from scratch.
	load := pol.Load
	if load == 0 {
		load = 1.25
	}
	zoneSizes := map[string]int{}
	for id := range eligible {
		zoneSizes[zoneOf[id]]++
	}
	even := true
	for _, s := range zoneSizes {
		for _, s2 := range zoneSizes {
			even = even && s == s2
		}
	}
	if even {
		avg := float64(parts*pol.Replicas-kept) / float64(len(eligible))
		limit := int(math.Ceil(load*avg - 1e-9))
		for id := range eligible {
			if count[id] > limit {
				t.Errorf("%s holds %d replicas, above the bounded-load cap %d (average %.1f)", id, count[id], limit, avg)
			}
		}
	}
	s := plan.Stats()
	for id := range eligible {
		if count[id] > s.Cap[id] {
			t.Errorf("%s holds %d replicas, above its cap %d", id, count[id], s.Cap[id])
		}
	}

	// The moves lead from the current sets to the desired ones.
	sets := make([][]string, parts)
	if current != nil {
		for i, p := range current.Partitions {
			sets[i] = slices.Clone(p.Replicas)
		}
	}
	for _, m := range plan.Moves {
		if m.Add == "" && m.Remove == "" {
			t.Errorf("empty move %+v", m)
		}
		if m.Add != "" {
			if slices.Contains(sets[m.Partition], m.Add) {
				t.Errorf("move %+v adds a replica already there", m)
			}
			sets[m.Partition] = append(sets[m.Partition], m.Add)
		}
		if m.Remove != "" {
			i := slices.Index(sets[m.Partition], m.Remove)
			if i < 0 {
				t.Errorf("move %+v removes a replica not there", m)
				continue
			}
			sets[m.Partition] = slices.Delete(sets[m.Partition], i, i+1)
		}
	}
	for i, p := range tbl.Partitions {
		got, want := slices.Sorted(slices.Values(sets[i])), slices.Sorted(slices.Values(p.Replicas))
		if !slices.Equal(got, want) {
			t.Errorf("partition %d: moves lead to %v, desired %v", i, got, want)
		}
	}
	if !sort.SliceIsSorted(plan.Moves, func(i, j int) bool { return plan.Moves[i].Partition < plan.Moves[j].Partition }) {
		t.Error("moves are not in partition order")
	}

	// Epoch: +1 exactly when something changed.
	if current != nil {
		changed := len(plan.Moves) > 0 || !sameTable(current, tbl)
		if want := current.Epoch + map[bool]uint64{true: 1}[changed]; tbl.Epoch != want {
			t.Errorf("epoch %d after %d, changed=%v", tbl.Epoch, current.Epoch, changed)
		}
	}

	// Deterministic: the order of the input does not matter.
	rev := slices.Clone(nodes)
	slices.Reverse(rev)
	again, err := Desired(rev, current, pol)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(again.Table, plan.Table) || !reflect.DeepEqual(again.Moves, plan.Moves) {
		t.Error("reversing the node list changed the plan")
	}

	// A fixed point: planning again from the desired table changes nothing.
	pol2 := pol
	pol2.Partitions = 0
	next, err := Desired(nodes, tbl, pol2)
	if err != nil {
		t.Fatal(err)
	}
	if len(next.Moves) != 0 || next.Table.Epoch != tbl.Epoch {
		t.Errorf("planning again from the desired table gives %d moves (%v), epoch %d → %d",
			len(next.Moves), next.Moves, tbl.Epoch, next.Table.Epoch)
	}
}

func render(sc scenario, pol Policy, current *Table, plan *Plan) string {
	var b strings.Builder
	fmt.Fprintf(&b, "# %s: %s\n", sc.name, sc.about)
	fmt.Fprintf(&b, "policy: replicas=%d load=%.2f vnodes=%d zone-label=%s min-disk-free=%s partitions=%d\n",
		pol.Replicas, pol.Load, pol.VirtualNodes, pol.ZoneLabel, bytesStr(pol.MinDiskFree), plan.Table.NumPartitions())
	b.WriteString("\nnodes:\n")
	nodes := slices.Clone(sc.nodes)
	sort.Slice(nodes, func(i, j int) bool { return nodes[i].ID < nodes[j].ID })
	for _, n := range nodes {
		arch := n.Caps.Arch
		if n.Caps.GOARM != "" {
			arch += "v" + n.Caps.GOARM
		}
		var labels []string
		for k, v := range n.Labels {
			labels = append(labels, k+"="+v)
		}
		sort.Strings(labels)
		line := fmt.Sprintf("  %-4s %-8s %-7s disk=%-6s fsync-p99=%-5v %s",
			n.ID, n.State, arch, bytesStr(n.Caps.DiskFree), n.Caps.FsyncP99, strings.Join(labels, " "))
		b.WriteString(strings.TrimRight(line, " ") + "\n")
	}
	if len(plan.Excluded) > 0 {
		b.WriteString("\nexcluded from new replicas:\n")
		for _, e := range plan.Excluded {
			fmt.Fprintf(&b, "  %-4s %s\n", e.Node, e.Reason)
		}
	}
	zoneOf := map[string]string{}
	for _, n := range sc.nodes {
		zoneOf[n.ID] = n.Labels["zone"]
	}
	var epochFrom string
	if current != nil {
		epochFrom = fmt.Sprintf("%d -> ", current.Epoch)
	}
	fmt.Fprintf(&b, "\ntable (epoch %s%d): partition: replicas, leader first\n", epochFrom, plan.Table.Epoch)
	for _, p := range plan.Table.Partitions {
		var rs []string
		for _, r := range p.Replicas {
			if z := zoneOf[r]; z != "" {
				r += "@" + z
			}
			rs = append(rs, r)
		}
		change := ""
		if current != nil {
			var added, removed []string
			for _, m := range plan.Moves {
				if m.Partition != p.ID {
					continue
				}
				if m.Add != "" {
					added = append(added, "+"+m.Add)
				}
				if m.Remove != "" {
					removed = append(removed, "-"+m.Remove)
				}
			}
			if len(added)+len(removed) > 0 {
				change = "   " + strings.Join(append(added, removed...), " ")
			}
		}
		fmt.Fprintf(&b, "  p%02d  %s%s\n", p.ID, strings.Join(rs, " "), change)
	}
	fmt.Fprintf(&b, "\nmoves (%d):\n", len(plan.Moves))
	for _, m := range plan.Moves {
		fmt.Fprintf(&b, "  p%02d  add %-4s remove %s\n", m.Partition, dash(m.Add), dash(m.Remove))
	}
	s := plan.Stats()
	b.WriteString("\nstats:\n  node  replicas  leaders  fair   cap\n")
	var ids []string
	for id := range s.Replicas {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for _, id := range ids {
		fair, capStr := "-", "-"
		if f, ok := s.Fair[id]; ok {
			fair, capStr = fmt.Sprintf("%.2f", f), fmt.Sprint(s.Cap[id])
		}
		fmt.Fprintf(&b, "  %-4s  %8d  %7d  %5s  %3s\n", id, s.Replicas[id], s.Leaders[id], fair, capStr)
	}
	ratio := "-"
	if s.Ideal > 0 {
		ratio = fmt.Sprintf("%.2fx", float64(s.Moved)/float64(s.Ideal))
	}
	fmt.Fprintf(&b, "  moved %d (ideal %d, %s), removed %d\n", s.Moved, s.Ideal, ratio, s.Removed)
	return b.String()
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func bytesStr(n uint64) string {
	switch {
	case n == 0:
		return "0"
	case n%(1<<30) == 0:
		return fmt.Sprintf("%dG", n>>30)
	case n%(1<<20) == 0:
		return fmt.Sprintf("%dM", n>>20)
	}
	return fmt.Sprint(n)
}

// lineDiff shows the first differing lines, enough to see what moved.
func lineDiff(want, got string) string {
	w, g := strings.Split(want, "\n"), strings.Split(got, "\n")
	var b strings.Builder
	shown := 0
	for i := 0; i < max(len(w), len(g)) && shown < 20; i++ {
		var wl, gl string
		if i < len(w) {
			wl = w[i]
		}
		if i < len(g) {
			gl = g[i]
		}
		if wl != gl {
			fmt.Fprintf(&b, "line %d:\n  want %q\n  got  %q\n", i+1, wl, gl)
			shown++
		}
	}
	return b.String()
}

// TestDesiredGrowMovesNearIdeal checks the data moved on growth at a larger
// scale than the golden files, for several cluster sizes.
func TestDesiredGrowMovesNearIdeal(t *testing.T) {
	for _, c := range []struct{ parts, from, to, replicas int }{
		{256, 3, 5, 3}, {256, 5, 6, 3}, {128, 4, 8, 3}, {256, 10, 12, 3}, {64, 3, 4, 1}, {100, 6, 9, 5},
	} {
		t.Run(fmt.Sprintf("p%d-%dto%d-r%d", c.parts, c.from, c.to, c.replicas), func(t *testing.T) {
			pol := DefaultPolicy()
			pol.Replicas, pol.Partitions = c.replicas, c.parts
			before := mustDesired(t, names("n", 1, c.from), nil, pol)
			after := mustDesired(t, names("n", 1, c.to), before.Table, pol)
			checkPlan(t, names("n", 1, c.to), before.Table, pol, after)
			s := after.Stats()
			if float64(s.Moved) > 1.3*float64(s.Ideal) {
				t.Errorf("moved %d, ideal %d", s.Moved, s.Ideal)
			}
			t.Logf("moved %d, ideal %d, replicas %v", s.Moved, s.Ideal, s.Replicas)
		})
	}
}

// TestDesiredReplicaCountChange: raising the replica count adds replicas
// without moving any; lowering it only removes.
func TestDesiredReplicaCountChange(t *testing.T) {
	nodes := names("n", 1, 7)
	pol := DefaultPolicy()
	pol.Partitions = 32
	three := mustDesired(t, nodes, nil, pol)
	pol.Partitions, pol.Replicas = 0, 5
	five := mustDesired(t, nodes, three.Table, pol)
	checkPlan(t, nodes, three.Table, pol, five)
	for _, m := range five.Moves {
		if m.Remove != "" {
			t.Errorf("growing the replica count removed a replica: %+v", m)
		}
	}
	pol.Replicas = 3
	back := mustDesired(t, nodes, five.Table, pol)
	checkPlan(t, nodes, five.Table, pol, back)
	if s := back.Stats(); s.Moved > 2 {
		t.Errorf("lowering the replica count created %d replicas", s.Moved)
	}
}

func TestNodeRecordJSON(t *testing.T) {
	r := rec("n1", zone("a"), piZero)
	r.Load = Load{CPU: 12.5, RSS: 30 << 20, Replicas: 8, Leaders: 3, ReportedAt: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}
	b, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{`"id":"n1"`, `"zone":"a"`, `"goarm":"6"`, `"fsync_p99_ns":30000000`, `"state":"active"`, `"leaders":3`} {
		if !strings.Contains(string(b), key) {
			t.Errorf("%s lacks %s", b, key)
		}
	}
	var back NodeRecord
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(back, r) {
		t.Errorf("round trip:\n got %+v\nwant %+v", back, r)
	}
	for _, s := range []NodeState{StateJoining, StateActive, StateDraining, StateSuspect, StateDead, StateRemoved} {
		if !s.Valid() {
			t.Errorf("%s not valid", s)
		}
	}
	if NodeState("gone").Valid() || NodeState("").Valid() {
		t.Error("unknown states accepted")
	}
}

func TestSizeString(t *testing.T) {
	for n, want := range map[uint64]string{0: "0 B", 1023: "1023 B", 1536: "1.5 KiB", 4 << 30: "4.0 GiB", 1<<30 + 1<<29: "1.5 GiB"} {
		if got := sizeString(n); got != want {
			t.Errorf("sizeString(%d) = %q, want %q", n, got, want)
		}
	}
}

func TestDesiredUnchangedKeepsEpoch(t *testing.T) {
	pol := DefaultPolicy()
	pol.Partitions = 16
	first := mustDesired(t, names("n", 1, 4), nil, pol)
	first.Table.Epoch = 41
	pol.Partitions = 0
	again := mustDesired(t, names("n", 1, 4), first.Table, pol)
	if again.Table.Epoch != 41 || len(again.Moves) != 0 {
		t.Errorf("no change: epoch %d, moves %v", again.Table.Epoch, again.Moves)
	}
	grown := mustDesired(t, names("n", 1, 5), first.Table, pol)
	if grown.Table.Epoch != 42 {
		t.Errorf("a change gave epoch %d, want 42", grown.Table.Epoch)
	}
	// The plan does not alias its input.
	grown.Table.Partitions[0].Replicas[0] = "zz"
	if slices.Contains(first.Table.Partitions[0].Replicas, "zz") {
		t.Error("plan shares memory with the current table")
	}
}

// TestDesiredZoneRule: with fewer zones than replicas, replicas still spread
// over every zone; with as many, no zone holds two replicas of a partition;
// unequal zones get unequal, not excessive, loads.
func TestDesiredZoneRule(t *testing.T) {
	for _, c := range []struct {
		name  string
		zones []string // zone per node, n1..
		reps  int
	}{
		{"two-zones", []string{"a", "a", "a", "b", "b", "b"}, 3},
		{"three-uneven", []string{"a", "b", "b", "c", "c", "c", "c"}, 3},
		{"five-reps-three-zones", []string{"a", "b", "c", "c", "c", "c", "c"}, 5},
		{"four-zones", []string{"a", "a", "b", "b", "c", "c", "d", "d"}, 3},
	} {
		t.Run(c.name, func(t *testing.T) {
			var nodes []NodeRecord
			for i, z := range c.zones {
				nodes = append(nodes, rec(fmt.Sprintf("n%d", i+1), zone(z)))
			}
			pol := DefaultPolicy()
			pol.Replicas, pol.Partitions = c.reps, 48
			plan := mustDesired(t, nodes, nil, pol)
			checkPlan(t, nodes, nil, pol, plan)
			// As even as possible: the smallest per-zone limit that fits
			// every replica, given how many nodes each zone has.
			size := map[string]int{}
			for _, z := range c.zones {
				size[z]++
			}
			perZoneMax := 1
			for fit := 0; ; perZoneMax++ {
				fit = 0
				for _, s := range size {
					fit += min(s, perZoneMax)
				}
				if fit >= c.reps {
					break
				}
			}
			for _, p := range plan.Table.Partitions {
				per := map[string]int{}
				for _, r := range p.Replicas {
					per[zonesOf(nodes, []string{r})[0]]++
				}
				for z, k := range per {
					if k > perZoneMax {
						t.Errorf("partition %d has %d replicas in zone %s (%v)", p.ID, k, z, p.Replicas)
					}
				}
			}
			// Within a zone the load is even: a zone's nodes share what
			// the zone must hold.
			s := plan.Stats()
			for z := range size {
				lo, hi := math.MaxInt, 0
				for i, nz := range c.zones {
					if nz == z {
						k := s.Replicas[fmt.Sprintf("n%d", i+1)]
						lo, hi = min(lo, k), max(hi, k)
					}
				}
				if hi-lo > 1 {
					t.Errorf("zone %s: nodes hold between %d and %d replicas", z, lo, hi)
				}
			}
			t.Logf("replicas per node: %v", s.Replicas)
		})
	}
}

func TestDesiredRejectsBadInput(t *testing.T) {
	pol := DefaultPolicy()
	pol.Partitions = 8
	ok := names("n", 1, 3)
	cases := []struct {
		name  string
		nodes []NodeRecord
		cur   *Table
		pol   func(*Policy)
		want  error
	}{
		{"no replicas", ok, nil, func(p *Policy) { p.Replicas = 0 }, ErrBadConfig},
		{"load below 1", ok, nil, func(p *Policy) { p.Load = 0.5 }, ErrBadConfig},
		{"negative vnodes", ok, nil, func(p *Policy) { p.VirtualNodes = -1 }, ErrBadConfig},
		{"no partition count", ok, nil, func(p *Policy) { p.Partitions = 0 }, ErrBadConfig},
		{"partition count differs", ok, &Table{Nodes: []Node{{ID: "n1", Addr: "a"}}, Partitions: []Partition{{ID: 0}}}, nil, ErrBadConfig},
		{"duplicate id", append(names("n", 1, 3), rec("n1")), nil, nil, ErrBadConfig},
		{"empty id", append(names("n", 1, 3), NodeRecord{Node: Node{Addr: "x:1"}, State: StateActive}), nil, nil, ErrBadConfig},
		{"unknown state", append(names("n", 1, 3), rec("n4", state("sleepy"))), nil, nil, ErrBadConfig},
		{"shared address", append(names("n", 1, 3), rec("n9", func(r *NodeRecord) { r.Addr = "10.0.0.1:7100" })), nil, nil, ErrBadConfig},
		{"bad current table", ok, &Table{Partitions: []Partition{{ID: 0, Replicas: []string{"ghost"}}}}, func(p *Policy) { p.Partitions = 0 }, ErrBadConfig},
		{"too few eligible", withState(ok, "n3", StateDraining), nil, nil, ErrTooManyNodes},
		{"none eligible", names("n", 1, 3, state(StateJoining)), nil, nil, ErrNoEligibleNodes},
		{"no nodes", nil, nil, nil, ErrNoEligibleNodes},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := pol
			if c.pol != nil {
				c.pol(&p)
			}
			plan, err := Desired(c.nodes, c.cur, p)
			if !errors.Is(err, c.want) {
				t.Fatalf("got %v, %v; want %v", plan, err, c.want)
			}
		})
	}
	// Every policy problem is reported at once.
	err := Policy{Replicas: -1, Load: 0.2, VirtualNodes: -3}.Validate()
	for _, s := range []string{"replica", "load", "virtual"} {
		if err == nil || !strings.Contains(err.Error(), s) {
			t.Errorf("policy error %v does not mention %s", err, s)
		}
	}
	// A removed node may share an address with its replacement.
	nodes := append(names("n", 1, 3), rec("n9", state(StateRemoved), func(r *NodeRecord) { r.Addr = "10.0.0.1:7100" }))
	if _, err := Desired(nodes, nil, pol); err != nil {
		t.Errorf("removed node's old address: %v", err)
	}
}

// BenchmarkDesired: a large fleet grows by 10%.
func BenchmarkDesired(b *testing.B) {
	for _, c := range []struct{ parts, nodes int }{{256, 30}, {1024, 100}} {
		b.Run(fmt.Sprintf("p%d-n%d", c.parts, c.nodes), func(b *testing.B) {
			pol := DefaultPolicy()
			pol.Partitions = c.parts
			var nodes []NodeRecord
			for i := 1; i <= c.nodes; i++ {
				nodes = append(nodes, rec(fmt.Sprintf("n%d", i), zone(fmt.Sprintf("z%d", i%5))))
			}
			before, err := Desired(nodes[:c.nodes*9/10], nil, pol)
			if err != nil {
				b.Fatal(err)
			}
			pol.Partitions = 0
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if _, err := Desired(nodes, before.Table, pol); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
