package client_test

import (
	"bytes"
	"context"
	"fmt"
	"hash/crc32"
	"net"
	"sort"
	"strings"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/zerogrid/zerogrid/grid"
	"github.com/zerogrid/zerogrid/grid/gridpb"
)

// fakeCluster is a working in-memory zerogrid cluster: real gRPC servers on
// loopback listeners, one per fake node, sharing one store. It has no Raft:
// which node leads each partition is a knob, and every node answers as a real
// one would given that (NotLeader with a hint, PartitionNotHere, stale reads
// from any replica). Writes are deduplicated by (client id, seq).
type fakeCluster struct {
	limits grid.Limits

	mu           sync.Mutex // guards everything below; handlers hold it throughout
	nodes        []*fakeNode
	parts        []fakePart
	epoch        uint64
	hints        bool // non-leaders name the leader
	tableLeaders bool // GetTable names the leaders
	maps         map[string]map[string]fakeEntry
	index        uint64 // the "Raft index", shared by all partitions
	outcomes     map[dedupKey]proto.Message
	applied      int // writes applied (deduplicated retries not counted)
	rejected     int // NotLeader, NoLeader and PartitionNotHere answers
	watch        fakeWatchLog
}

type fakePart struct {
	replicas []int // node indexes
	leader   int   // node index, -1: none
}

type fakeEntry struct {
	value   []byte
	version uint64
	crc     uint32
}

type dedupKey struct{ client, seq uint64 }

type failKind int

const (
	failUnavailable   failKind = iota + 1 // the call fails like a dropped connection, doing nothing
	failAmbiguous                         // the node gives up before applying and says the outcome is unknown
	failLostReply                         // the node applies the write, then the reply is lost (ambiguous)
	failDeadline                          // the node times out before applying (DeadlineExceeded)
	failResourceLimit                     // the node refuses: too much at once (ResourceExhausted)
)

type fakeNode struct {
	id, addr string
	srv      *grpc.Server
	// guarded by fakeCluster.mu
	fails   []failKind
	kvCalls int // every KV call that reached the node
	served  int // KV calls answered successfully
	stopped bool
}

// newFakeCluster starts n nodes holding `partitions` partitions, each
// replicated on every node (in a rotated order), led by its first replica.
// The table names the leaders and non-leaders give hints, until told not to.
func newFakeCluster(n, partitions int) (*fakeCluster, error) {
	f := &fakeCluster{
		limits: grid.DefaultLimits(), epoch: 1, hints: true, tableLeaders: true,
		maps: map[string]map[string]fakeEntry{}, outcomes: map[dedupKey]proto.Message{},
	}
	for p := 0; p < partitions; p++ {
		var reps []int
		for i := 0; i < n; i++ {
			reps = append(reps, (p+i)%n)
		}
		f.parts = append(f.parts, fakePart{replicas: reps, leader: reps[0]})
	}
	for i := 0; i < n; i++ {
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			f.Close()
			return nil, err
		}
		node := &fakeNode{id: fmt.Sprintf("node-%d", i), addr: lis.Addr().String()}
		node.srv = grpc.NewServer(grpc.UnaryInterceptor(f.countUnary(i)), grpc.StreamInterceptor(f.countStream(i)))
		gridpb.RegisterKVServer(node.srv, &fakeKV{f: f, n: i})
		gridpb.RegisterAdminServer(node.srv, &fakeAdmin{f: f, n: i})
		gridpb.RegisterWatchServer(node.srv, &fakeWatch{f: f, n: i})
		f.nodes = append(f.nodes, node)
		go func() { _ = node.srv.Serve(lis) }()
	}
	return f, nil
}

// Close stops every node and waits for their handlers to return.
func (f *fakeCluster) Close() {
	for i := range f.nodes {
		f.Stop(i)
	}
}

// Stop shuts node i down: connections to it are refused from now on.
func (f *fakeCluster) Stop(i int) {
	f.mu.Lock()
	n := f.nodes[i]
	already := n.stopped
	n.stopped = true
	f.mu.Unlock()
	if !already {
		n.srv.Stop()
	}
}

func (f *fakeCluster) Addrs() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for _, n := range f.nodes {
		out = append(out, n.addr)
	}
	return out
}

func (f *fakeCluster) ID(i int) string { return f.nodes[i].id }

// SetLeader makes node the leader of partition part (-1: no leader).
func (f *fakeCluster) SetLeader(part, node int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.parts[part].leader = node
}

// SetAllLeaders makes node lead every partition it holds.
func (f *fakeCluster) SetAllLeaders(node int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for p := range f.parts {
		f.parts[p].leader = node
	}
}

func (f *fakeCluster) Leader(part int) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.parts[part].leader
}

func (f *fakeCluster) Replicas(part int) []int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]int(nil), f.parts[part].replicas...)
}

// MovePartition gives part a new replica set, led by its first member, and
// bumps the table epoch.
func (f *fakeCluster) MovePartition(part int, nodes ...int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.parts[part] = fakePart{replicas: nodes, leader: nodes[0]}
	f.epoch++
}

func (f *fakeCluster) SetHints(on bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.hints = on
}

func (f *fakeCluster) SetTableLeaders(on bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.tableLeaders = on
}

// FailNext makes the next n KV calls reaching node fail as kind says.
func (f *fakeCluster) FailNext(node int, kind failKind, n int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for ; n > 0; n-- {
		f.nodes[node].fails = append(f.nodes[node].fails, kind)
	}
}

// ClearFailures drops every failure still queued.
func (f *fakeCluster) ClearFailures() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, n := range f.nodes {
		n.fails = nil
	}
}

// Corrupt flips a bit of a stored value, leaving its checksum alone.
func (f *fakeCluster) Corrupt(mapName string, key []byte) {
	f.mu.Lock()
	defer f.mu.Unlock()
	e := f.maps[mapName][string(key)]
	v := append([]byte(nil), e.value...)
	if len(v) == 0 {
		v = []byte{0}
	}
	v[0] ^= 0x01
	e.value = v
	f.maps[mapName][string(key)] = e
}

// Partition is where the cluster puts key.
func (f *fakeCluster) Partition(mapName string, key []byte) int {
	return grid.PartitionOf(mapName, key, len(f.parts))
}

func (f *fakeCluster) KVCalls(node int) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.nodes[node].kvCalls
}

func (f *fakeCluster) TotalKVCalls() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	total := 0
	for _, n := range f.nodes {
		total += n.kvCalls
	}
	return total
}

func (f *fakeCluster) Served(node int) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.nodes[node].served
}

func (f *fakeCluster) Rejected() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.rejected
}

func (f *fakeCluster) Applied() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.applied
}

// Value returns what the store holds for key, bypassing every node.
func (f *fakeCluster) Value(mapName string, key []byte) (fakeEntry, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	e, ok := f.maps[mapName][string(key)]
	return e, ok
}

func (f *fakeCluster) countUnary(i int) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		return f.count(i, info.FullMethod, func() (any, error) { return h(ctx, req) })
	}
}

func (f *fakeCluster) countStream(i int) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
		_, err := f.count(i, info.FullMethod, func() (any, error) { return nil, h(srv, ss) })
		return err
	}
}

func (f *fakeCluster) count(i int, method string, call func() (any, error)) (any, error) {
	kv := strings.HasPrefix(method, "/zerogrid.v1.KV/")
	if kv {
		f.mu.Lock()
		f.nodes[i].kvCalls++
		f.mu.Unlock()
	}
	resp, err := call()
	if kv && err == nil {
		f.mu.Lock()
		f.nodes[i].served++
		f.mu.Unlock()
	}
	return resp, err
}

// takeFailure pops node i's next injected failure. Called with f.mu held.
func (f *fakeCluster) takeFailure(i int) failKind {
	n := f.nodes[i]
	if len(n.fails) == 0 {
		return 0
	}
	k := n.fails[0]
	n.fails = n.fails[1:]
	return k
}

// failBefore turns an injected failure into the error a node would return
// before doing any work. Called with f.mu held.
func failBefore(k failKind) error {
	switch k {
	case failUnavailable:
		return status.Error(codes.Unavailable, "fake: connection dropped")
	case failAmbiguous:
		return gridpb.ToStatus(fmt.Errorf("fake: leadership lost: %w", grid.ErrAmbiguous))
	case failDeadline:
		return status.Error(codes.DeadlineExceeded, "fake: timed out waiting for commit")
	case failResourceLimit:
		return status.Error(codes.ResourceExhausted, "fake: too much at once")
	}
	return nil
}

// route checks that node i may serve partition part. Called with f.mu held.
func (f *fakeCluster) route(i, part int, needLeader bool) error {
	p := f.parts[part]
	id := f.nodes[i].id
	held := false
	for _, r := range p.replicas {
		held = held || r == i
	}
	switch {
	case !held:
		f.rejected++
		return fmt.Errorf("fake %s, partition %d: %w", id, part, grid.ErrPartitionNotHere)
	case !needLeader || p.leader == i:
		return nil
	case p.leader < 0:
		f.rejected++
		return fmt.Errorf("fake %s, partition %d: %w", id, part, grid.ErrNoLeader)
	case !f.hints:
		f.rejected++
		return &grid.NotLeaderError{Partition: part}
	}
	f.rejected++
	l := f.nodes[p.leader]
	return &grid.NotLeaderError{Partition: part, LeaderID: l.id, LeaderAddr: l.addr}
}

// write runs one deduplicated write on node i. Called without f.mu.
func (f *fakeCluster) write(i int, h *gridpb.WriteHeader, key []byte, apply func(m map[string]fakeEntry) proto.Message) (proto.Message, error) {
	if err := grid.ValidateMapName(h.GetMap()); err != nil {
		return nil, gridpb.ToStatus(err)
	}
	if err := f.limits.CheckKey(key); err != nil {
		return nil, gridpb.ToStatus(err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	fail := f.takeFailure(i)
	if err := failBefore(fail); err != nil {
		return nil, err
	}
	part := grid.PartitionOf(h.GetMap(), key, len(f.parts))
	if err := f.route(i, part, true); err != nil {
		return nil, gridpb.ToStatus(err)
	}
	m, ok := f.maps[h.GetMap()]
	if !ok {
		return nil, gridpb.ToStatus(fmt.Errorf("%w: %q", grid.ErrUnknownMap, h.GetMap()))
	}
	dk := dedupKey{h.GetClientId(), h.GetSeq()}
	resp, done := f.outcomes[dk]
	if !done || dk.client == 0 {
		resp = apply(m)
		f.outcomes[dk] = resp
		f.applied++
	}
	if fail == failLostReply {
		return nil, gridpb.ToStatus(fmt.Errorf("fake: reply lost: %w", grid.ErrAmbiguous))
	}
	return resp, nil
}

// read checks a read on node i and returns the map to read from. Called
// with f.mu held.
func (f *fakeCluster) read(i int, mapName string, part int, c gridpb.Consistency) (map[string]fakeEntry, error) {
	if fail := f.takeFailure(i); fail != 0 {
		if fail == failLostReply {
			fail = failAmbiguous
		}
		return nil, failBefore(fail)
	}
	if err := f.route(i, part, c == gridpb.Consistency_LINEARIZABLE); err != nil {
		return nil, gridpb.ToStatus(err)
	}
	m, ok := f.maps[mapName]
	if !ok {
		return nil, gridpb.ToStatus(fmt.Errorf("%w: %q", grid.ErrUnknownMap, mapName))
	}
	return m, nil
}

func crc32c(b []byte) uint32 { return crc32.Checksum(b, crc32.MakeTable(crc32.Castagnoli)) }

type fakeKV struct {
	gridpb.UnimplementedKVServer
	f *fakeCluster
	n int
}

func (s *fakeKV) Put(_ context.Context, req *gridpb.PutRequest) (*gridpb.PutResponse, error) {
	if err := s.f.limits.CheckValue(req.GetValue()); err != nil {
		return nil, gridpb.ToStatus(err)
	}
	if req.GetCrc() != 0 && req.GetCrc() != crc32c(req.GetValue()) {
		return nil, gridpb.ToStatus(grid.ErrChecksum)
	}
	resp, err := s.f.write(s.n, req.GetHeader(), req.GetKey(), func(m map[string]fakeEntry) proto.Message {
		s.f.index++
		m[string(req.GetKey())] = fakeEntry{value: bytes.Clone(req.GetValue()), version: s.f.index, crc: crc32c(req.GetValue())}
		return &gridpb.PutResponse{Version: s.f.index}
	})
	if err != nil {
		return nil, err
	}
	return resp.(*gridpb.PutResponse), nil
}

func (s *fakeKV) Delete(_ context.Context, req *gridpb.DeleteRequest) (*gridpb.DeleteResponse, error) {
	resp, err := s.f.write(s.n, req.GetHeader(), req.GetKey(), func(m map[string]fakeEntry) proto.Message {
		s.f.index++
		_, existed := m[string(req.GetKey())]
		delete(m, string(req.GetKey()))
		return &gridpb.DeleteResponse{Existed: existed, Version: s.f.index}
	})
	if err != nil {
		return nil, err
	}
	return resp.(*gridpb.DeleteResponse), nil
}

func (s *fakeKV) CompareAndSwap(_ context.Context, req *gridpb.CompareAndSwapRequest) (*gridpb.CompareAndSwapResponse, error) {
	if err := s.f.limits.CheckValue(req.GetValue()); err != nil {
		return nil, gridpb.ToStatus(err)
	}
	resp, err := s.f.write(s.n, req.GetHeader(), req.GetKey(), func(m map[string]fakeEntry) proto.Message {
		s.f.index++ // the command takes a log index whether or not it swaps
		cur, ok := m[string(req.GetKey())]
		if cur.version != req.GetExpectedVersion() {
			return &gridpb.CompareAndSwapResponse{Swapped: false, Version: cur.version}
		}
		if req.GetDelete() {
			if ok {
				delete(m, string(req.GetKey()))
			}
			return &gridpb.CompareAndSwapResponse{Swapped: true}
		}
		m[string(req.GetKey())] = fakeEntry{value: bytes.Clone(req.GetValue()), version: s.f.index, crc: crc32c(req.GetValue())}
		return &gridpb.CompareAndSwapResponse{Swapped: true, Version: s.f.index}
	})
	if err != nil {
		return nil, err
	}
	return resp.(*gridpb.CompareAndSwapResponse), nil
}

func (s *fakeKV) Get(_ context.Context, req *gridpb.GetRequest) (*gridpb.GetResponse, error) {
	if err := grid.ValidateMapName(req.GetMap()); err != nil {
		return nil, gridpb.ToStatus(err)
	}
	if err := s.f.limits.CheckKey(req.GetKey()); err != nil {
		return nil, gridpb.ToStatus(err)
	}
	s.f.mu.Lock()
	defer s.f.mu.Unlock()
	part := grid.PartitionOf(req.GetMap(), req.GetKey(), len(s.f.parts))
	m, err := s.f.read(s.n, req.GetMap(), part, req.GetConsistency())
	if err != nil {
		return nil, err
	}
	e, ok := m[string(req.GetKey())]
	return &gridpb.GetResponse{
		Found: ok, Value: e.value, Version: e.version, Crc: e.crc,
		AppliedIndex: s.f.index, ServedBy: s.f.nodes[s.n].id,
	}, nil
}

func (s *fakeKV) Scan(req *gridpb.ScanRequest, stream grpc.ServerStreamingServer[gridpb.ScanResponse]) error {
	if err := grid.ValidateMapName(req.GetMap()); err != nil {
		return gridpb.ToStatus(err)
	}
	limit := int(req.GetLimit())
	if limit == 0 {
		limit = 100
	}
	resp, err := func() (*gridpb.ScanResponse, error) {
		s.f.mu.Lock()
		defer s.f.mu.Unlock()
		part := int(req.GetPartition())
		if part >= len(s.f.parts) {
			return nil, gridpb.ToStatus(grid.ErrBadPartition)
		}
		m, err := s.f.read(s.n, req.GetMap(), part, req.GetConsistency())
		if err != nil {
			return nil, err
		}
		var keys []string
		for k := range m {
			kb := []byte(k)
			if grid.PartitionOf(req.GetMap(), kb, len(s.f.parts)) == part && bytes.HasPrefix(kb, req.GetPrefix()) &&
				(len(req.GetStartAfter()) == 0 || k > string(req.GetStartAfter())) {
				keys = append(keys, k)
			}
		}
		sort.Strings(keys)
		resp := &gridpb.ScanResponse{AppliedIndex: s.f.index, More: len(keys) > limit}
		if len(keys) > limit {
			keys = keys[:limit]
		}
		for _, k := range keys {
			e := m[k]
			resp.Entries = append(resp.Entries, &gridpb.Entry{Key: []byte(k), Value: e.value, Version: e.version, Crc: e.crc})
		}
		return resp, nil
	}()
	if err != nil {
		return err
	}
	return stream.Send(resp)
}

type fakeAdmin struct {
	gridpb.UnimplementedAdminServer
	f *fakeCluster
	n int
}

func (s *fakeAdmin) CreateMap(_ context.Context, req *gridpb.CreateMapRequest) (*gridpb.CreateMapResponse, error) {
	if err := grid.ValidateMapName(req.GetName()); err != nil {
		return nil, gridpb.ToStatus(err)
	}
	s.f.mu.Lock()
	defer s.f.mu.Unlock()
	if _, ok := s.f.maps[req.GetName()]; ok {
		return nil, gridpb.ToStatus(fmt.Errorf("%w: %q", grid.ErrMapExists, req.GetName()))
	}
	s.f.maps[req.GetName()] = map[string]fakeEntry{}
	return &gridpb.CreateMapResponse{}, nil
}

func (s *fakeAdmin) ListMaps(context.Context, *gridpb.ListMapsRequest) (*gridpb.ListMapsResponse, error) {
	s.f.mu.Lock()
	defer s.f.mu.Unlock()
	resp := &gridpb.ListMapsResponse{}
	for name := range s.f.maps {
		resp.Names = append(resp.Names, name)
	}
	sort.Strings(resp.Names)
	return resp, nil
}

func (s *fakeAdmin) GetTable(context.Context, *gridpb.GetTableRequest) (*gridpb.TableResponse, error) {
	s.f.mu.Lock()
	defer s.f.mu.Unlock()
	resp := &gridpb.TableResponse{Epoch: s.f.epoch, Replicas: uint32(len(s.f.parts[0].replicas))}
	for _, n := range s.f.nodes {
		resp.Nodes = append(resp.Nodes, &gridpb.NodeInfo{Id: n.id, Addr: n.addr})
	}
	for i, p := range s.f.parts {
		pi := &gridpb.PartitionInfo{Id: uint32(i)}
		for _, r := range p.replicas {
			pi.Replicas = append(pi.Replicas, s.f.nodes[r].id)
		}
		if s.f.tableLeaders && p.leader >= 0 {
			pi.Leader = s.f.nodes[p.leader].id
		}
		resp.Partitions = append(resp.Partitions, pi)
	}
	return resp, nil
}

func (s *fakeAdmin) Status(context.Context, *gridpb.StatusRequest) (*gridpb.StatusResponse, error) {
	s.f.mu.Lock()
	defer s.f.mu.Unlock()
	n := s.f.nodes[s.n]
	resp := &gridpb.StatusResponse{NodeId: n.id, Addr: n.addr, TableEpoch: s.f.epoch, Version: "fake"}
	for i, p := range s.f.parts {
		g := &gridpb.GroupStatus{Partition: int32(i), AppliedIndex: s.f.index, State: "Follower"}
		if p.leader == s.n {
			g.State = "Leader"
		}
		resp.Groups = append(resp.Groups, g)
	}
	for _, m := range s.f.maps {
		resp.Keys += uint64(len(m))
	}
	return resp, nil
}

var (
	_ gridpb.KVServer    = (*fakeKV)(nil)
	_ gridpb.AdminServer = (*fakeAdmin)(nil)
)
