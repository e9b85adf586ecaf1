package grid

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/buraksezer/consistent"
	"github.com/cespare/xxhash/v2"
)

// StorageLabel is the operator label that marks a compute-only node:
// storage=false keeps every replica off it.
const StorageLabel = "storage"

// Leader preference: replicas whose fsync p99 is within 1.5× + 100µs of the
// fastest replica of their partition count as equally fast, and leadership is
// spread among them. Probes are noisy; without the slack one lucky probe
// would make one node lead everything on a fleet of identical machines.
const leaderSlackAbs = 100 * time.Microsecond

func leaderSlack(best time.Duration) time.Duration {
	if best > math.MaxInt64/4 {
		return math.MaxInt64
	}
	return best*3/2 + leaderSlackAbs
}

// Placement decisions use integers and exact fractions only: floating-point
// results may differ between machines (the compiler may fuse a multiply and
// an add on arm64), and every node must compute the same table.

// Policy tunes Desired.
type Policy struct {
	Replicas     int     // copies of each partition
	Load         float64 // bounded-load factor (≥ 1): no node holds more than Load × its fair share; 0 means 1.25
	VirtualNodes int     // ring points per member (consistent's ReplicationFactor, not data copies); 0 means 64
	ZoneLabel    string  // the label naming a node's failure domain; "" means "zone"
	MinDiskFree  uint64  // bytes a node must have free to receive new replicas
	// Partitions is the partition count of a new cluster, used when current
	// is nil or has no partitions. The count is fixed once a table exists:
	// when both are given they must agree.
	Partitions int
}

// DefaultPolicy: three replicas, bounded load 1.25, 64 ring points per node,
// failure domains from the "zone" label.
func DefaultPolicy() Policy {
	return Policy{Replicas: 3, Load: 1.25, VirtualNodes: 64, ZoneLabel: "zone"}
}

// maxVirtualNodes bounds the ring size: the ring is rebuilt on every call.
const maxVirtualNodes = 4096

// Validate reports every problem with the policy at once.
func (p Policy) Validate() error {
	var errs []error
	if p.Replicas <= 0 {
		errs = append(errs, fmt.Errorf("%w: replica count %d must be positive", ErrBadConfig, p.Replicas))
	}
	if p.Load != 0 && (p.Load < 1 || math.IsNaN(p.Load) || math.IsInf(p.Load, 0)) {
		errs = append(errs, fmt.Errorf("%w: load factor %v must be at least 1", ErrBadConfig, p.Load))
	}
	if p.VirtualNodes < 0 || p.VirtualNodes > maxVirtualNodes {
		errs = append(errs, fmt.Errorf("%w: virtual nodes %d must be in 0..%d", ErrBadConfig, p.VirtualNodes, maxVirtualNodes))
	}
	if p.Partitions < 0 {
		errs = append(errs, fmt.Errorf("%w: partition count %d must not be negative", ErrBadConfig, p.Partitions))
	}
	return errors.Join(errs...)
}

func (p Policy) withDefaults() Policy {
	if p.Load == 0 {
		p.Load = 1.25
	}
	if p.VirtualNodes == 0 {
		p.VirtualNodes = 64
	}
	if p.ZoneLabel == "" {
		p.ZoneLabel = "zone"
	}
	return p
}

// Move is one step from the current table to the desired one: add a replica
// of Partition on Add and remove the one on Remove. Either may be empty (a
// pure add restores a lost replica; a pure remove sheds an extra one). When
// both are set the add must complete before the remove.
type Move struct {
	Partition int    `json:"partition"`
	Add       string `json:"add,omitempty"`
	Remove    string `json:"remove,omitempty"`
}

// Exclusion says why a node may not receive new replicas.
type Exclusion struct {
	Node   string `json:"node"`
	Reason string `json:"reason"`
}

// Plan is the desired table and the way there from the current one.
type Plan struct {
	// Table is the desired table. Its epoch is the current epoch + 1 when
	// anything differs from the current table, else the current epoch.
	Table *Table
	// Moves turn the current replica sets into the desired ones, in
	// partition order; within a partition, added and removed nodes are
	// paired in id order.
	Moves []Move
	// Excluded lists, by node id, the nodes that may not receive replicas.
	Excluded []Exclusion

	fair  map[string]float64
	caps  map[string]int
	ideal int
}

// PlanStats sums a plan up.
type PlanStats struct {
	Replicas map[string]int     // replicas per node in the desired table (nodes that hold or may hold any)
	Leaders  map[string]int     // preferred leaderships per node
	Fair     map[string]float64 // fair share of replicas per eligible node
	Cap      map[string]int     // bounded-load cap per eligible node: ⌈Load × fair share⌉
	Moved    int                // replicas created (data copied to a new holder)
	Removed  int                // replicas removed
	Ideal    int                // fewest replicas that must be created for every node to hold ≈ its fair share
}

// Stats counts replicas and leaders per node and the data the plan moves.
func (p *Plan) Stats() PlanStats {
	s := PlanStats{
		Replicas: map[string]int{},
		Leaders:  map[string]int{},
		Fair:     map[string]float64{},
		Cap:      map[string]int{},
		Ideal:    p.ideal,
	}
	for id, f := range p.fair {
		s.Fair[id] = f
		s.Replicas[id] += 0
	}
	for id, c := range p.caps {
		s.Cap[id] = c
	}
	if p.Table != nil {
		for _, part := range p.Table.Partitions {
			for _, r := range part.Replicas {
				s.Replicas[r]++
			}
			if part.Leader != "" {
				s.Leaders[part.Leader]++
			}
		}
	}
	for _, m := range p.Moves {
		if m.Add != "" {
			s.Moved++
		}
		if m.Remove != "" {
			s.Removed++
		}
	}
	return s
}

// Desired computes where every partition's replicas should live, as a pure
// function: the same nodes, table and policy give the same plan on every
// machine.
//
// Only active nodes with storage and at least MinDiskFree bytes free receive
// replicas. Draining, dead, removed, joining and compute-only (storage=false)
// nodes keep none. Suspect nodes, and active nodes short of disk, keep the
// replicas they have but receive no new ones: a slow node should not cause a
// reshuffle that it will reverse when it recovers.
//
// Each partition's primary is its owner on a bounded-load consistent-hash ring
// (buraksezer/consistent) over the eligible nodes. The other replicas are kept
// where they are when they are still allowed, then the rest are chosen so that
// replicas of one partition sit in distinct failure domains (the ZoneLabel
// label; a node without it is a domain of its own) when there are at least
// Replicas domains, and as evenly spread over the domains as possible when
// there are fewer. Finally replicas move from nodes above their fair share to
// nodes below it, one at a time, until every node holds about its share.
// The primary never moves this way, so with one replica the placement is the
// ring's own. Replicas on nodes missing from nodes are re-placed.
// Replicas are listed leader-first: the preferred leader is the replica with
// the lowest fsync p99 (see leaderSlack), spreading leaderships among
// equally fast replicas, ties broken by id.
func Desired(nodes []NodeRecord, current *Table, policy Policy) (*Plan, error) {
	if err := policy.Validate(); err != nil {
		return nil, err
	}
	pol := policy.withDefaults()
	if err := validateRecords(nodes); err != nil {
		return nil, err
	}
	parts, err := partitionCount(current, pol)
	if err != nil {
		return nil, err
	}
	pl := newPlacer(nodes, current, pol, parts)
	if err := pl.checkEnough(); err != nil {
		return nil, err
	}
	if err := pl.ring(); err != nil {
		return nil, err
	}
	pl.sticky()
	pl.trimKeepOnly()
	pl.fairShares()
	pl.trimExcess()
	pl.fill()
	pl.improve()
	pl.chooseLeaders()
	return pl.plan(), nil
}

func validateRecords(nodes []NodeRecord) error {
	var errs []error
	ids := make(map[string]bool, len(nodes))
	addrs := make(map[string]string, len(nodes))
	for _, r := range nodes {
		if err := r.Validate(); err != nil {
			errs = append(errs, err)
			continue
		}
		if ids[r.ID] {
			errs = append(errs, fmt.Errorf("%w: duplicate node id %q", ErrBadConfig, r.ID))
		}
		ids[r.ID] = true
		if r.State == StateRemoved {
			continue // a reflashed machine may come back under a new id at the old address
		}
		if other, ok := addrs[r.Addr]; ok && other != r.ID {
			errs = append(errs, fmt.Errorf("%w: nodes %q and %q share address %s", ErrBadConfig, other, r.ID, r.Addr))
		}
		addrs[r.Addr] = r.ID
	}
	return errors.Join(errs...)
}

func partitionCount(current *Table, pol Policy) (int, error) {
	if current == nil || len(current.Partitions) == 0 {
		if pol.Partitions <= 0 {
			return 0, fmt.Errorf("%w: no current table and no partition count in the policy", ErrBadConfig)
		}
		return pol.Partitions, nil
	}
	if err := current.Validate(); err != nil {
		return 0, fmt.Errorf("current table: %w", err)
	}
	if pol.Partitions != 0 && pol.Partitions != len(current.Partitions) {
		return 0, fmt.Errorf("%w: policy asks for %d partitions, the table has %d (the count is fixed at creation)",
			ErrBadConfig, pol.Partitions, len(current.Partitions))
	}
	return len(current.Partitions), nil
}

// nodeClass is what a node may do with replicas.
type nodeClass uint8

const (
	classNone     nodeClass = iota // holds nothing: its replicas are re-placed
	classKeep                      // keeps the replicas it has, receives none
	classEligible                  // may receive replicas
)

// placer holds the working state of one Desired call. Nodes are indices into
// ids, which is sorted, so every loop runs in the same order everywhere.
type placer struct {
	pol     Policy
	parts   int
	current *Table

	ids      []string
	index    map[string]int
	recs     []NodeRecord
	class    []nodeClass
	reason   []string // why a node is not eligible
	eligible []int    // sorted indices of eligible nodes
	hash     []uint64 // per node, for rendezvous tie-breaks

	zone     []int // failure domain index per node
	zoneCap  int   // most replicas of one partition in one domain
	minZones int   // fewest distinct domains per partition

	fairNum     []int64 // fair share per node: fairNum/fairDen replicas
	fairDen     []int64
	lo, hi, cap []int
	count       []int
	keepHeld    int // replicas left on keep-only nodes

	primary []int
	sets    [][]int // desired replicas per partition
	leader  []int
}

func newPlacer(nodes []NodeRecord, current *Table, pol Policy, parts int) *placer {
	recs := append([]NodeRecord(nil), nodes...)
	sort.Slice(recs, func(i, j int) bool { return recs[i].ID < recs[j].ID })
	n := len(recs)
	pl := &placer{
		pol: pol, parts: parts, current: current, recs: recs,
		ids: make([]string, n), index: make(map[string]int, n),
		class: make([]nodeClass, n), reason: make([]string, n), hash: make([]uint64, n), zone: make([]int, n),
		fairNum: make([]int64, n), fairDen: make([]int64, n), lo: make([]int, n), hi: make([]int, n), cap: make([]int, n), count: make([]int, n),
	}
	zones := map[string]int{}
	for i, r := range recs {
		pl.ids[i] = r.ID
		pl.index[r.ID] = i
		pl.hash[i] = xxhash.Sum64String(r.ID)
		pl.class[i], pl.reason[i] = classify(r, pol)
		if pl.class[i] == classEligible {
			pl.eligible = append(pl.eligible, i)
		}
		// A node without a zone label shares a failure domain with nobody.
		key := "\x00" + r.ID
		if z, ok := r.Label(pol.ZoneLabel); ok && z != "" {
			key = z
		}
		if _, ok := zones[key]; !ok {
			zones[key] = len(zones)
		}
		pl.zone[i] = zones[key]
	}
	return pl
}

func classify(r NodeRecord, pol Policy) (nodeClass, string) {
	if v, ok := r.Label(StorageLabel); ok && strings.EqualFold(v, "false") {
		return classNone, "compute-only (storage=false)"
	}
	switch r.State {
	case StateActive:
	case StateSuspect:
		return classKeep, "suspect"
	default:
		return classNone, string(r.State)
	}
	if r.Caps.DiskFree < pol.MinDiskFree {
		return classKeep, fmt.Sprintf("disk free %s, below the %s minimum", sizeString(r.Caps.DiskFree), sizeString(pol.MinDiskFree))
	}
	return classEligible, ""
}

func (pl *placer) checkEnough() error {
	if len(pl.eligible) >= pl.pol.Replicas {
		return nil
	}
	var why []string
	for i, c := range pl.class {
		if c != classEligible {
			why = append(why, pl.ids[i]+": "+pl.reason[i])
		}
	}
	detail := ""
	if len(why) > 0 {
		detail = " (not eligible: " + strings.Join(why, "; ") + ")"
	}
	if len(pl.eligible) == 0 {
		return fmt.Errorf("%w: %d nodes%s", ErrNoEligibleNodes, len(pl.recs), detail)
	}
	return fmt.Errorf("%w: %d eligible nodes for %d replicas%s", ErrTooManyNodes, len(pl.eligible), pl.pol.Replicas, detail)
}

// ringMember and ringHasher adapt node ids and xxhash to consistent's ring.
type ringMember string

func (m ringMember) String() string { return string(m) }

type ringHasher struct{}

func (ringHasher) Sum64(b []byte) uint64 { return xxhash.Sum64(b) }

// ring picks each partition's primary: its owner on a bounded-load ring over
// the eligible nodes.
func (pl *placer) ring() (err error) {
	members := make([]consistent.Member, 0, len(pl.eligible))
	for _, i := range pl.eligible {
		members = append(members, ringMember(pl.ids[i]))
	}
	defer func() {
		if r := recover(); r != nil { // consistent panics where it cannot place; keep that from the caller
			err = fmt.Errorf("%w: consistent hash ring: %v", ErrBadConfig, r)
		}
	}()
	c := consistent.New(members, consistent.Config{
		PartitionCount:    pl.parts,
		ReplicationFactor: pl.pol.VirtualNodes,
		Load:              pl.pol.Load,
		Hasher:            ringHasher{},
	})
	pl.primary = make([]int, pl.parts)
	for p := range pl.primary {
		m := c.GetPartitionOwner(p)
		if m == nil {
			return fmt.Errorf("%w: ring left partition %d without an owner", ErrBadConfig, p)
		}
		pl.primary[p] = pl.index[m.String()]
	}

	// Domain limits, from the eligible domains' sizes: zoneCap is the smallest
	// per-domain limit that still fits Replicas copies.
	size := map[int]int{}
	for _, i := range pl.eligible {
		size[pl.zone[i]]++
	}
	pl.minZones = min(len(size), pl.pol.Replicas)
	for pl.zoneCap = 1; ; pl.zoneCap++ {
		fit := 0
		for _, s := range size {
			fit += min(s, pl.zoneCap)
		}
		if fit >= pl.pol.Replicas {
			break
		}
	}
	return nil
}

// weight is a rendezvous hash of (partition, node): it breaks ties so that
// equal choices spread over the nodes instead of piling on the lowest id.
func (pl *placer) weight(p, n int) uint64 {
	x := pl.hash[n] + uint64(p+1)*0x9e3779b97f4a7c15
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	return x ^ x>>31
}

// canAdd reports whether node n may join set without breaking the domain
// rules: at most zoneCap replicas per domain, and room left to reach
// minZones distinct domains.
func (pl *placer) canAdd(set []int, n int, spread bool) bool {
	same := 0
	zones := map[int]bool{}
	for _, m := range set {
		zones[pl.zone[m]] = true
		if pl.zone[m] == pl.zone[n] {
			same++
		}
	}
	if same >= pl.zoneCap {
		return false
	}
	if spread && same > 0 && pl.pol.Replicas-len(set)-1 < pl.minZones-len(zones) {
		return false
	}
	return true
}

// violation measures how far a replica set is from the domain rules.
func (pl *placer) violation(set []int) int {
	per := map[int]int{}
	for _, m := range set {
		per[pl.zone[m]]++
	}
	v := max(0, pl.minZones-len(per))
	for _, c := range per {
		v += max(0, c-pl.zoneCap)
	}
	return v
}

// sticky starts every partition from its primary plus the current replicas
// that may stay: on nodes that keep or receive replicas, within the domain
// rules. Current replicas are taken in the current preference order.
func (pl *placer) sticky() {
	pl.sets = make([][]int, pl.parts)
	for p := range pl.sets {
		set := []int{pl.primary[p]}
		if pl.current != nil && p < len(pl.current.Partitions) {
			for _, id := range pl.current.Partitions[p].Replicas {
				n, ok := pl.index[id]
				if !ok || pl.class[n] == classNone || slices.Contains(set, n) {
					continue
				}
				if pl.canAdd(set, n, true) {
					set = append(set, n)
				}
			}
		}
		pl.sets[p] = set
		for _, n := range set {
			pl.count[n]++
		}
	}
}

// trimKeepOnly makes room where a partition has more than Replicas (its new
// primary came on top of a full set). A keep-only node keeps its replica:
// its leaving the ring (a suspect node does) moves the primaries of the
// partitions it owned, and that alone must not take replicas off it. So a
// primary that is new to a set holding a keep-only replica gives way, and
// the set's first eligible replica becomes the primary. Otherwise replicas
// on keep-only nodes are dropped first.
func (pl *placer) trimKeepOnly() {
	for p, set := range pl.sets {
		keepOnly := func(n int) bool { return pl.class[n] == classKeep }
		if len(set) > pl.pol.Replicas && !pl.wasReplica(p, set[0]) && slices.ContainsFunc(set[1:], keepOnly) {
			pl.count[set[0]]--
			set = set[1:]
			pl.primary[p] = -1 // none: every replica is keep-only
			for _, n := range set {
				if pl.class[n] == classEligible {
					pl.primary[p] = n
					break
				}
			}
		}
		for i := len(set) - 1; i > 0 && len(set) > pl.pol.Replicas; i-- {
			if pl.class[set[i]] == classKeep {
				pl.count[set[i]]--
				set = slices.Delete(set, i, i+1)
			}
		}
		pl.sets[p] = set
		for _, n := range set {
			if pl.class[n] == classKeep {
				pl.keepHeld++
			}
		}
	}
}

// wasReplica reports whether node n holds partition p in the current table.
func (pl *placer) wasReplica(p, n int) bool {
	return pl.current != nil && p < len(pl.current.Partitions) && slices.Contains(pl.current.Partitions[p].Replicas, pl.ids[n])
}

// fairShares splits the replicas that eligible nodes must hold among them,
// equally except where the domain rules cap a domain: a domain can hold at
// most zoneCap replicas of each partition, and a node one. Water-filling: the
// most constrained domains are filled to their limit, the rest share equally.
// Shares are exact fractions.
func (pl *placer) fairShares() {
	type dom struct {
		id, nodes int
		num, den  int64 // per-node limit
	}
	byZone := map[int]*dom{}
	var doms []*dom
	for _, i := range pl.eligible {
		d := byZone[pl.zone[i]]
		if d == nil {
			d = &dom{id: pl.zone[i]}
			byZone[pl.zone[i]] = d
			doms = append(doms, d)
		}
		d.nodes++
	}
	P := int64(pl.parts)
	for _, d := range doms {
		d.num, d.den = P, 1 // a node holds each partition at most once
		if d.nodes > pl.zoneCap {
			d.num, d.den = int64(pl.zoneCap)*P, int64(d.nodes)
		}
	}
	sort.SliceStable(doms, func(i, j int) bool { return doms[i].num*doms[j].den < doms[j].num*doms[i].den })
	type frac struct{ num, den int64 }
	level := map[int]frac{}
	remT := int64(pl.pol.Replicas*pl.parts - pl.keepHeld)
	remN := int64(len(pl.eligible))
	for k, d := range doms {
		if d.num*remN <= remT*d.den { // the domain's limit is below an equal share
			level[d.id] = frac{d.num, d.den}
			remT -= d.num * int64(d.nodes) / d.den // exact: num×nodes is a multiple of den
			remN -= int64(d.nodes)
			continue
		}
		for _, rest := range doms[k:] {
			level[rest.id] = frac{remT, remN}
		}
		break
	}
	loadMilli := int64(math.Round(pl.pol.Load * 1000))
	for _, i := range pl.eligible {
		f := level[pl.zone[i]]
		pl.fairNum[i], pl.fairDen[i] = f.num, f.den
		pl.lo[i] = int(f.num / f.den)
		pl.hi[i] = int((f.num + f.den - 1) / f.den)
		pl.cap[i] = max(pl.hi[i], int((loadMilli*f.num+1000*f.den-1)/(1000*f.den)))
	}
}

// cmpExcess orders nodes by how far they are above their fair share:
// negative when a is less loaded than b.
func (pl *placer) cmpExcess(a, b int) int {
	// (count_a − num_a/den_a) vs (count_b − num_b/den_b), over a common denominator.
	x := (int64(pl.count[a])*pl.fairDen[a] - pl.fairNum[a]) * pl.fairDen[b]
	y := (int64(pl.count[b])*pl.fairDen[b] - pl.fairNum[b]) * pl.fairDen[a]
	switch {
	case x < y:
		return -1
	case x > y:
		return 1
	}
	return 0
}

// trimExcess drops, where a partition still has too many replicas, the one on
// the node furthest above its share (never the primary).
func (pl *placer) trimExcess() {
	for p, set := range pl.sets {
		for len(set) > pl.pol.Replicas {
			drop := -1
			for k := 1; k < len(set); k++ {
				if drop < 0 || pl.better(p, set[k], set[drop], pl.cmpExcess) {
					drop = k
				}
			}
			pl.count[set[drop]]--
			set = slices.Delete(set, drop, drop+1)
		}
		pl.sets[p] = set
	}
}

// better reports whether a ranks before b: first by cmp (greater first), then
// by rendezvous weight for partition p, then by id.
func (pl *placer) better(p, a, b int, cmp func(a, b int) int) bool {
	if c := cmp(a, b); c != 0 {
		return c > 0
	}
	if wa, wb := pl.weight(p, a), pl.weight(p, b); wa != wb {
		return wa > wb
	}
	return a < b
}

// fill completes every partition with the most under-loaded allowed node,
// relaxing the rules one at a time only where nothing else fits: first the
// fair share, then the load cap, then the domain spread, then the domain cap.
func (pl *placer) fill() {
	deficit := func(a, b int) int { return pl.cmpExcess(b, a) }
	type rule struct {
		limit  func(n int) bool
		spread bool
		zones  bool
	}
	rules := []rule{
		{func(n int) bool { return pl.count[n] < pl.hi[n] }, true, true},
		{func(n int) bool { return pl.count[n] < pl.cap[n] }, true, true},
		{func(int) bool { return true }, true, true},
		{func(int) bool { return true }, false, true},
		{func(int) bool { return true }, false, false},
	}
	for p, set := range pl.sets {
		for len(set) < pl.pol.Replicas {
			pick := -1
			for _, r := range rules {
				for _, n := range pl.eligible {
					if slices.Contains(set, n) || !r.limit(n) || (r.zones && !pl.canAdd(set, n, r.spread)) {
						continue
					}
					if pick < 0 || pl.better(p, n, pick, deficit) {
						pick = n
					}
				}
				if pick >= 0 {
					break
				}
			}
			set = append(set, pick) // eligible ≥ Replicas, so the last rule always finds one
			pl.count[pick]++
		}
		pl.sets[p] = set
	}
}

// improve moves single replicas from nodes above their share to nodes below
// it while that is possible within the domain rules: first from above
// ⌈share⌉ to below ⌈share⌉, then from above ⌊share⌋ to below ⌊share⌋. Each
// move lowers the total distance from [⌊share⌋, ⌈share⌉], so this ends.
func (pl *placer) improve() {
	overHi := func(n int) bool { return pl.count[n] > pl.hi[n] }
	underHi := func(n int) bool { return pl.count[n] < pl.hi[n] }
	overLo := func(n int) bool { return pl.count[n] > pl.lo[n] }
	underLo := func(n int) bool { return pl.count[n] < pl.lo[n] }
	for guard := 2*pl.parts*pl.pol.Replicas + 1; guard > 0; guard-- {
		if !pl.moveOne(overHi, underHi) && !pl.moveOne(overLo, underLo) {
			return
		}
	}
}

func (pl *placer) moveOne(from, to func(int) bool) bool {
	var srcs, dsts []int
	for _, n := range pl.eligible {
		if from(n) {
			srcs = append(srcs, n)
		}
		if to(n) {
			dsts = append(dsts, n)
		}
	}
	if len(srcs) == 0 || len(dsts) == 0 {
		return false
	}
	sort.SliceStable(srcs, func(i, j int) bool { return pl.cmpExcess(srcs[i], srcs[j]) > 0 })
	sort.SliceStable(dsts, func(i, j int) bool { return pl.cmpExcess(dsts[i], dsts[j]) < 0 })
	for _, a := range srcs {
		for _, b := range dsts {
			best, bestW := -1, uint64(0)
			for p, set := range pl.sets {
				if pl.primary[p] == a || !slices.Contains(set, a) || slices.Contains(set, b) {
					continue
				}
				w := pl.weight(p, b)
				if best >= 0 && w <= bestW {
					continue
				}
				swapped := slices.Clone(set)
				swapped[slices.Index(set, a)] = b
				if pl.violation(swapped) > pl.violation(set) {
					continue
				}
				best, bestW = p, w
			}
			if best >= 0 {
				set := pl.sets[best]
				set[slices.Index(set, a)] = b
				pl.count[a]--
				pl.count[b]++
				return true
			}
		}
	}
	return false
}

// fsyncRank orders disks for leadership: measured ones by p99, unmeasured
// last.
func (pl *placer) fsyncRank(n int) time.Duration {
	if d := pl.recs[n].Caps.FsyncP99; d > 0 {
		return d
	}
	return time.Duration(math.MaxInt64)
}

// chooseLeaders picks each partition's preferred leader among its replicas
// that may receive data: the fastest fsync p99, where "as fast" allows
// leaderSlack, spreading leaderships over equally fast nodes (fewest so
// far, then the current leader, then id). Replicas are then ordered
// leader-first, the others by fsync p99 and id.
func (pl *placer) chooseLeaders() {
	led := make([]int, len(pl.ids))
	pl.leader = make([]int, pl.parts)
	for p, set := range pl.sets {
		rankClass := func(n int) int {
			if pl.class[n] == classEligible {
				return 0
			}
			return 1
		}
		sort.SliceStable(set, func(i, j int) bool {
			a, b := set[i], set[j]
			if ca, cb := rankClass(a), rankClass(b); ca != cb {
				return ca < cb
			}
			if fa, fb := pl.fsyncRank(a), pl.fsyncRank(b); fa != fb {
				return fa < fb
			}
			return a < b
		})
		best := pl.fsyncRank(set[0])
		limit := best
		if best != time.Duration(math.MaxInt64) {
			limit = leaderSlack(best)
		}
		cur := ""
		if pl.current != nil && p < len(pl.current.Partitions) {
			cur = pl.current.Partitions[p].Leader
		}
		pick := set[0]
		for _, n := range set[1:] {
			if rankClass(n) != rankClass(set[0]) || pl.fsyncRank(n) > limit {
				break
			}
			switch {
			case led[n] < led[pick]:
				pick = n
			case led[n] == led[pick] && pl.ids[n] == cur && pl.ids[pick] != cur:
				pick = n
			}
		}
		led[pick]++
		pl.leader[p] = pick
		k := slices.Index(set, pick)
		copy(set[1:k+1], set[:k])
		set[0] = pick
	}
}

func (pl *placer) plan() *Plan {
	t := &Table{Replicas: pl.pol.Replicas}
	for _, r := range pl.recs {
		if r.State == StateRemoved {
			continue
		}
		nd := Node{ID: r.ID, Addr: r.Addr}
		if r.Labels != nil {
			nd.Labels = make(map[string]string, len(r.Labels))
			for k, v := range r.Labels {
				nd.Labels[k] = v
			}
		}
		t.Nodes = append(t.Nodes, nd)
	}
	for p, set := range pl.sets {
		part := Partition{ID: p, Leader: pl.ids[pl.leader[p]]}
		for _, n := range set {
			part.Replicas = append(part.Replicas, pl.ids[n])
		}
		t.Partitions = append(t.Partitions, part)
	}

	plan := &Plan{Table: t, fair: map[string]float64{}, caps: map[string]int{}}
	var cur *Table
	if pl.current != nil && len(pl.current.Partitions) > 0 {
		cur = pl.current
	}
	t.Epoch = 1
	if cur != nil {
		t.Epoch = cur.Epoch
		if !sameTable(cur, t) {
			t.Epoch++
		}
	}
	for p, part := range t.Partitions {
		var old []string
		if cur != nil {
			old = cur.Partitions[p].Replicas
		}
		plan.Moves = append(plan.Moves, diffMoves(p, old, part.Replicas)...)
	}
	for i, c := range pl.class {
		if c != classEligible {
			plan.Excluded = append(plan.Excluded, Exclusion{Node: pl.ids[i], Reason: pl.reason[i]})
		}
	}

	// The ideal: replicas that must be created so that every eligible node
	// holds between ⌊share⌋ and ⌈share⌉, if nothing else forced a move.
	had := make([]int, len(pl.ids))
	if cur != nil {
		for _, part := range cur.Partitions {
			for _, id := range part.Replicas {
				if n, ok := pl.index[id]; ok {
					had[n]++
				}
			}
		}
	}
	need, keep := 0, 0
	for _, n := range pl.eligible {
		plan.fair[pl.ids[n]] = float64(pl.fairNum[n]) / float64(pl.fairDen[n])
		plan.caps[pl.ids[n]] = pl.cap[n]
		need += max(0, pl.lo[n]-had[n])
		keep += min(had[n], pl.hi[n])
	}
	plan.ideal = max(need, pl.pol.Replicas*pl.parts-pl.keepHeld-keep)
	return plan
}

// sizeString renders a byte count for people: 1.5 GiB.
func sizeString(n uint64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := uint64(unit), 0
	for m := n / unit; m >= unit && exp < 5; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%d.%d %ciB", n/div, n%div*10/div, "KMGTPE"[exp])
}

// diffMoves pairs the replicas added to a partition with those removed from
// it, both in id order.
func diffMoves(p int, old, desired []string) []Move {
	var adds, removes []string
	for _, id := range desired {
		if !slices.Contains(old, id) {
			adds = append(adds, id)
		}
	}
	for _, id := range old {
		if !slices.Contains(desired, id) {
			removes = append(removes, id)
		}
	}
	sort.Strings(adds)
	sort.Strings(removes)
	var moves []Move
	for i := 0; i < max(len(adds), len(removes)); i++ {
		m := Move{Partition: p}
		if i < len(adds) {
			m.Add = adds[i]
		}
		if i < len(removes) {
			m.Remove = removes[i]
		}
		moves = append(moves, m)
	}
	return moves
}

// sameTable compares everything but the epoch.
func sameTable(a, b *Table) bool {
	if a.Replicas != b.Replicas || len(a.Nodes) != len(b.Nodes) || len(a.Partitions) != len(b.Partitions) {
		return false
	}
	for i := range a.Nodes {
		x, y := a.Nodes[i], b.Nodes[i]
		if x.ID != y.ID || x.Addr != y.Addr || len(x.Labels) != len(y.Labels) {
			return false
		}
		for k, v := range x.Labels {
			if w, ok := y.Labels[k]; !ok || w != v {
				return false
			}
		}
	}
	for i := range a.Partitions {
		x, y := a.Partitions[i], b.Partitions[i]
		if x.ID != y.ID || x.Leader != y.Leader || !slices.Equal(x.Replicas, y.Replicas) {
			return false
		}
	}
	return true
}
