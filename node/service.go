package node

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	"github.com/zerogrid/zerogrid/grid"
	"github.com/zerogrid/zerogrid/grid/gridpb"
	"github.com/zerogrid/zerogrid/replication"
)

// Scan pages are bounded in entries and bytes so a page always fits in one
// gRPC message.
const (
	defaultScanLimit = 1000
	maxScanLimit     = 10000
	maxScanBytes     = 2 << 20
)

// service implements the KV and Admin gRPC services of a node. Every
// handler validates its input before anything is proposed, so bad input
// changes nothing, and converts errors at the boundary with gridpb.ToStatus.
type service struct {
	gridpb.UnimplementedKVServer
	gridpb.UnimplementedAdminServer
	n *Node
}

// partitionFor validates the map and key and returns the local group that
// holds the key's partition.
func (s *service) partitionFor(ctx context.Context, mapName string, key []byte) (*replication.Group, error) {
	if err := grid.ValidateMapName(mapName); err != nil {
		return nil, err
	}
	if err := s.n.cfg.Limits.CheckKey(key); err != nil {
		return nil, err
	}
	if err := s.requireMap(ctx, mapName); err != nil {
		return nil, err
	}
	p := grid.PartitionOf(mapName, key, s.n.table().NumPartitions())
	return s.group(p)
}

func (s *service) group(p int) (*replication.Group, error) {
	if p < 0 || p >= s.n.table().NumPartitions() {
		return nil, fmt.Errorf("%w: %d (cluster has %d)", grid.ErrBadPartition, p, s.n.table().NumPartitions())
	}
	g, ok := s.n.host.Group(replication.GroupID(p))
	if !ok {
		return nil, fmt.Errorf("%w: partition %d", grid.ErrPartitionNotHere, p)
	}
	return g, nil
}

// requireMap checks the map exists. The local metadata replica answers
// almost always; on a miss (a map created a moment ago may not have reached
// this replica yet) the metadata leader is asked with a linearizable read.
func (s *service) requireMap(ctx context.Context, name string) error {
	if s.n.meta.Meta().HasMap(name) {
		return nil
	}
	names, err := s.linearizableMaps(ctx)
	if err != nil {
		return err
	}
	for _, n := range names {
		if n == name {
			return nil
		}
	}
	return fmt.Errorf("%w: %q (create it first: zerogrid map create %s)", grid.ErrUnknownMap, name, name)
}

// linearizableMaps lists maps as of now: read at the metadata leader after
// it confirms its leadership (forwarded there if this node does not lead).
func (s *service) linearizableMaps(ctx context.Context) ([]string, error) {
	meta := s.n.meta
	if meta.IsLeader() {
		v, _, err := meta.ReadView(ctx, true)
		if err != nil {
			return nil, err
		}
		v.Close()
		return meta.Meta().Maps(), nil
	}
	if forwarded(ctx) {
		return nil, fmt.Errorf("%w: metadata leadership moved while forwarding", grid.ErrNoLeader)
	}
	var names []string
	err := s.forwardToMetaLeader(ctx, func(ctx context.Context, c gridpb.AdminClient) error {
		resp, err := c.ListMaps(ctx, &gridpb.ListMapsRequest{})
		if err == nil {
			names = resp.Names
		}
		return err
	})
	return names, err
}

// writeTarget validates a write's header, map and key and returns the local
// group that holds the key's partition.
func (s *service) writeTarget(ctx context.Context, h *gridpb.WriteHeader, key []byte) (*replication.Group, error) {
	if h == nil {
		return nil, fmt.Errorf("%w: missing write header", grid.ErrBadRequest)
	}
	return s.partitionFor(ctx, h.Map, key)
}

// checkValue enforces the value limit and, when the client sent one, the
// value's CRC32C.
func (s *service) checkValue(value []byte, crc uint32) error {
	if err := s.n.cfg.Limits.CheckValue(value); err != nil {
		return err
	}
	if crc != 0 && crc != replication.Checksum(value) {
		return fmt.Errorf("%w: value does not match the CRC32C sent with it", grid.ErrChecksum)
	}
	return nil
}

func resultErr(res *gridpb.Result) error {
	switch res.Error {
	case "":
		return nil
	case "CHECKSUM":
		return fmt.Errorf("%w: value does not match the CRC32C sent with it", grid.ErrChecksum)
	case "BAD_TTL":
		return fmt.Errorf("%w: ttl out of range (%v..%v)", grid.ErrBadRequest, grid.MinTTL, grid.MaxTTL)
	case "MAP_EXISTS":
		return grid.ErrMapExists
	case "INVALID_MAP_NAME":
		return grid.ErrInvalidMapName
	case "STALE_TOKEN":
		return fmt.Errorf("%w: a write with a token at or above %d was already accepted for this fence; nothing was written", grid.ErrStaleToken, res.Version)
	case "LOCK_NOT_HELD":
		return fmt.Errorf("%w: not the holder, or its lease expired (lock token now %d)", grid.ErrLockNotHeld, res.Version)
	default:
		return fmt.Errorf("%w: %s", grid.ErrBadRequest, res.Error)
	}
}

func (s *service) propose(ctx context.Context, g *replication.Group, h *gridpb.WriteHeader, cmd *gridpb.Command) (*gridpb.Result, error) {
	// Only a leader refuses: a follower's answer sends the client to the
	// leader, whose disk may have room (a node low on disk hands its
	// leaderships away).
	if g.IsLeader() {
		if err := s.n.disk.refuse(cmd); err != nil {
			return nil, err
		}
	}
	cmd.ClientId, cmd.Seq = h.ClientId, h.Seq
	cmd.LeaderTime = time.Now().UnixNano()
	res, err := g.Propose(ctx, cmd)
	if err != nil {
		return nil, err
	}
	return res, resultErr(res)
}

func (s *service) Put(ctx context.Context, req *gridpb.PutRequest) (*gridpb.PutResponse, error) {
	if err := s.checkValue(req.Value, req.Crc); err != nil {
		return nil, err
	}
	if err := grid.ValidateTTL(req.TtlNanos); err != nil {
		return nil, err
	}
	if err := checkFence(req.Fence); err != nil {
		return nil, err
	}
	h := req.Header
	g, err := s.writeTarget(ctx, h, req.Key)
	if err != nil {
		return nil, err
	}
	res, err := s.propose(ctx, g, h, &gridpb.Command{Op: &gridpb.Command_Put{Put: &gridpb.PutOp{
		Map: h.Map, Key: req.Key, Value: req.Value, Crc: req.Crc, Fence: req.Fence, TtlNanos: req.TtlNanos,
	}}})
	if err != nil {
		return nil, err
	}
	return &gridpb.PutResponse{Version: res.Version}, nil
}

// checkFence validates a write's optional fencing token.
func checkFence(f *gridpb.Fence) error {
	if f == nil {
		return nil
	}
	return grid.ValidateFence(f.Name, f.Token)
}

func (s *service) Delete(ctx context.Context, req *gridpb.DeleteRequest) (*gridpb.DeleteResponse, error) {
	if err := checkFence(req.Fence); err != nil {
		return nil, err
	}
	h := req.Header
	g, err := s.writeTarget(ctx, h, req.Key)
	if err != nil {
		return nil, err
	}
	res, err := s.propose(ctx, g, h, &gridpb.Command{Op: &gridpb.Command_Delete{Delete: &gridpb.DeleteOp{Map: h.Map, Key: req.Key, Fence: req.Fence}}})
	if err != nil {
		return nil, err
	}
	return &gridpb.DeleteResponse{Existed: res.Existed, Version: res.Version}, nil
}

func (s *service) CompareAndSwap(ctx context.Context, req *gridpb.CompareAndSwapRequest) (*gridpb.CompareAndSwapResponse, error) {
	if req.Delete && len(req.Value) > 0 {
		return nil, fmt.Errorf("%w: a compare-and-delete carries no value", grid.ErrBadRequest)
	}
	if err := s.checkValue(req.Value, req.Crc); err != nil {
		return nil, err
	}
	if err := grid.ValidateTTL(req.TtlNanos); err != nil {
		return nil, err
	}
	if req.Delete && req.TtlNanos != 0 {
		return nil, fmt.Errorf("%w: a compare-and-delete carries no ttl", grid.ErrBadRequest)
	}
	if err := checkFence(req.Fence); err != nil {
		return nil, err
	}
	h := req.Header
	g, err := s.writeTarget(ctx, h, req.Key)
	if err != nil {
		return nil, err
	}
	res, err := s.propose(ctx, g, h, &gridpb.Command{Op: &gridpb.Command_Cas{Cas: &gridpb.CasOp{
		Map: h.Map, Key: req.Key, ExpectedVersion: req.ExpectedVersion, Value: req.Value, Delete: req.Delete, Crc: req.Crc,
		TtlNanos: req.TtlNanos, Fence: req.Fence,
	}}})
	if err != nil {
		return nil, err
	}
	return &gridpb.CompareAndSwapResponse{Swapped: res.Ok, Version: res.Version}, nil
}

// maxTxnOps bounds the compares and writes of one transaction.
const maxTxnOps = 128

func (s *service) Txn(ctx context.Context, req *gridpb.TxnRequest) (*gridpb.TxnResponse, error) {
	h := req.Header
	if h == nil {
		return nil, fmt.Errorf("%w: missing write header", grid.ErrBadRequest)
	}
	if n := len(req.Compares) + len(req.ThenOps) + len(req.ElseOps); n == 0 || n > maxTxnOps {
		return nil, fmt.Errorf("%w: a transaction has 1..%d compares and writes, got %d", grid.ErrBadRequest, maxTxnOps, n)
	}
	if err := checkFence(req.Fence); err != nil {
		return nil, err
	}
	var keys [][]byte
	compared := 0
	for _, c := range req.Compares {
		keys = append(keys, c.Key)
		compared += len(c.Key) + len(c.Value)
	}
	if compared > s.n.cfg.Limits.MaxValueBytes {
		return nil, fmt.Errorf("%w: a transaction's compares carry %d bytes, limit %d", grid.ErrValueTooLarge, compared, s.n.cfg.Limits.MaxValueBytes)
	}
	for _, branch := range [][]*gridpb.TxnWrite{req.ThenOps, req.ElseOps} {
		size := 0
		for _, w := range branch {
			keys = append(keys, w.Key)
			if w.Delete && (len(w.Value) > 0 || w.TtlNanos != 0) {
				return nil, fmt.Errorf("%w: a delete carries no value or ttl", grid.ErrBadRequest)
			}
			if err := grid.ValidateTTL(w.TtlNanos); err != nil {
				return nil, fmt.Errorf("key %q: %w", w.Key, err)
			}
			if err := s.checkValue(w.Value, w.Crc); err != nil {
				return nil, fmt.Errorf("key %q: %w", w.Key, err)
			}
			size += len(w.Key) + len(w.Value)
		}
		if size > s.n.cfg.Limits.MaxValueBytes {
			return nil, fmt.Errorf("%w: a transaction branch writes %d bytes, limit %d", grid.ErrValueTooLarge, size, s.n.cfg.Limits.MaxValueBytes)
		}
	}
	var g *replication.Group
	part := -1
	for _, k := range keys {
		kg, err := s.partitionFor(ctx, h.Map, k)
		if err != nil {
			return nil, err
		}
		p := int(kg.ID())
		if part >= 0 && p != part {
			return nil, fmt.Errorf("%w: transaction keys span partitions %d and %d; give related keys one {hash tag}", grid.ErrBadRequest, part, p)
		}
		part, g = p, kg
	}
	res, err := s.propose(ctx, g, h, &gridpb.Command{Op: &gridpb.Command_Txn{Txn: &gridpb.TxnOp{
		Map: h.Map, Compares: req.Compares, ThenOps: req.ThenOps, ElseOps: req.ElseOps, Fence: req.Fence,
	}}})
	if err != nil {
		return nil, err
	}
	return &gridpb.TxnResponse{Succeeded: res.Ok, Version: res.Version}, nil
}

func (s *service) Get(ctx context.Context, req *gridpb.GetRequest) (*gridpb.GetResponse, error) {
	g, err := s.partitionFor(ctx, req.Map, req.Key)
	if err != nil {
		return nil, err
	}
	e, applied, err := g.Get(ctx, req.Map, req.Key, req.Consistency == gridpb.Consistency_LINEARIZABLE)
	if errors.Is(err, grid.ErrNotFound) {
		return &gridpb.GetResponse{Found: false, AppliedIndex: applied, ServedBy: s.n.cfg.ID}, nil
	}
	if err != nil {
		return nil, err
	}
	return &gridpb.GetResponse{Found: true, Value: e.Value, Version: e.Version, Crc: e.CRC, AppliedIndex: applied, ServedBy: s.n.cfg.ID, Expiry: e.Expiry}, nil
}

func (s *service) Scan(req *gridpb.ScanRequest, stream gridpb.KV_ScanServer) error {
	ctx := stream.Context()
	if err := grid.ValidateMapName(req.Map); err != nil {
		return err
	}
	if len(req.Prefix) > s.n.cfg.Limits.MaxKeyBytes || len(req.StartAfter) > s.n.cfg.Limits.MaxKeyBytes {
		return fmt.Errorf("%w: scan prefix or start key over %d bytes", grid.ErrKeyTooLarge, s.n.cfg.Limits.MaxKeyBytes)
	}
	if err := s.requireMap(ctx, req.Map); err != nil {
		return err
	}
	limit := int(req.Limit)
	switch {
	case limit == 0:
		limit = defaultScanLimit
	case limit > maxScanLimit:
		limit = maxScanLimit
	}
	g, err := s.group(int(req.Partition))
	if err != nil {
		return err
	}
	entries, more, applied, err := g.Scan(ctx, req.Map, req.Prefix, req.StartAfter, limit, maxScanBytes, req.Consistency == gridpb.Consistency_LINEARIZABLE)
	if err != nil {
		return err
	}
	resp := &gridpb.ScanResponse{More: more, AppliedIndex: applied}
	for _, e := range entries {
		resp.Entries = append(resp.Entries, &gridpb.Entry{Key: e.Key, Value: e.Value, Version: e.Version, Crc: e.CRC, Expiry: e.Expiry})
	}
	return stream.Send(resp)
}

func (s *service) CreateMap(ctx context.Context, req *gridpb.CreateMapRequest) (*gridpb.CreateMapResponse, error) {
	err := s.createMap(ctx, req)
	if err != nil {
		return nil, err
	}
	return &gridpb.CreateMapResponse{}, nil
}

func (s *service) createMap(ctx context.Context, req *gridpb.CreateMapRequest) error {
	if err := grid.ValidateMapName(req.Name); err != nil {
		return err
	}
	meta := s.n.meta
	if !meta.IsLeader() {
		if forwarded(ctx) {
			return fmt.Errorf("%w: metadata leadership moved while forwarding", grid.ErrNoLeader)
		}
		return s.forwardToMetaLeader(ctx, func(ctx context.Context, c gridpb.AdminClient) error {
			_, err := c.CreateMap(ctx, req)
			return err
		})
	}
	res, err := meta.Propose(ctx, &gridpb.MetaCommand{Op: &gridpb.MetaCommand_CreateMap{CreateMap: &gridpb.CreateMapOp{Name: req.Name}}})
	if err != nil {
		return err
	}
	return resultErr(res)
}

// forwardToMetaLeader sends an admin write to the metadata leader, waiting
// briefly for one to be elected.
func (s *service) forwardToMetaLeader(ctx context.Context, call func(context.Context, gridpb.AdminClient) error) error {
	return s.toMetaLeader(ctx, func(ctx context.Context, conn *grpc.ClientConn) error {
		return call(ctx, gridpb.NewAdminClient(conn))
	})
}

// toMetaLeader runs call on a connection to the metadata leader, marked as
// forwarded, waiting briefly for a leader to be elected. A node that knows
// no leader for long (it was removed from the metadata group, or is cut
// off) says so instead of holding the caller, who can ask another node.
func (s *service) toMetaLeader(ctx context.Context, call func(context.Context, *grpc.ClientConn) error) error {
	wait := time.NewTimer(metaLeaderWait)
	defer wait.Stop()
	for {
		id, addr := s.n.meta.Leader()
		if id != "" && id != s.n.cfg.ID {
			conn, err := s.n.conns.get(addr)
			if err != nil {
				return err
			}
			fctx := metadata.AppendToOutgoingContext(ctx, forwardedKey, s.n.cfg.ID)
			return gridpb.FromStatus(call(fctx, conn))
		}
		if id == s.n.cfg.ID {
			return fmt.Errorf("%w: metadata leadership is changing", grid.ErrNoLeader)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w: metadata group: %w", grid.ErrNoLeader, ctx.Err())
		case <-wait.C:
			return fmt.Errorf("%w: metadata group: node %s knows no leader after %v", grid.ErrNoLeader, s.n.cfg.ID, metaLeaderWait)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// metaLeaderWait bounds how long a request waits for a metadata leader to
// be elected before the node answers that it knows none.
const metaLeaderWait = 3 * time.Second

// forwardedKey marks a request one node forwarded to another, so a request
// never bounces between nodes that each think the other leads.
const forwardedKey = "x-zerogrid-forwarded-by"

func forwarded(ctx context.Context) bool {
	md, ok := metadata.FromIncomingContext(ctx)
	return ok && len(md.Get(forwardedKey)) > 0
}

func (s *service) ListMaps(ctx context.Context, _ *gridpb.ListMapsRequest) (*gridpb.ListMapsResponse, error) {
	names, err := s.linearizableMaps(ctx)
	if err != nil {
		return nil, err
	}
	return &gridpb.ListMapsResponse{Names: names}, nil
}

func (s *service) GetTable(ctx context.Context, _ *gridpb.GetTableRequest) (*gridpb.TableResponse, error) {
	t := s.n.table()
	resp := &gridpb.TableResponse{Epoch: t.Epoch, Replicas: uint32(t.Replicas)}
	for _, nd := range t.Nodes {
		resp.Nodes = append(resp.Nodes, &gridpb.NodeInfo{Id: nd.ID, Addr: nd.Addr})
	}
	for _, p := range t.Partitions {
		pi := &gridpb.PartitionInfo{Id: uint32(p.ID), Replicas: p.Replicas, Learner: p.Learner, Leaving: p.Leaving, Repair: p.Repair}
		if g, ok := s.n.host.Group(replication.GroupID(p.ID)); ok {
			pi.Leader, _ = g.Leader()
		}
		resp.Partitions = append(resp.Partitions, pi)
	}
	for _, r := range t.Recoveries {
		resp.Recoveries = append(resp.Recoveries, &gridpb.RecoveryRecord{Partition: uint32(r.Partition), From: r.From, Lost: r.Lost,
			AtUnixMs: r.AtUnixMs, Epoch: r.Epoch, Operator: r.Operator, PossiblyLost: r.PossiblyLost})
	}
	return resp, nil
}

// Audit returns the node's audit log.
func (s *service) Audit(ctx context.Context, req *gridpb.AuditRequest) (*gridpb.AuditResponse, error) {
	limit := int(req.GetLimit())
	if limit == 0 {
		limit = 1000
	}
	recs, err := s.n.sec.audit.read(limit)
	if err != nil {
		return nil, err
	}
	raw, err := json.Marshal(recs)
	if err != nil {
		return nil, err
	}
	return &gridpb.AuditResponse{RecordsJson: raw}, nil
}

func (s *service) Status(ctx context.Context, _ *gridpb.StatusRequest) (*gridpb.StatusResponse, error) {
	resp := &gridpb.StatusResponse{NodeId: s.n.cfg.ID, Addr: s.n.addr, TableEpoch: s.n.table().Epoch, Version: Version}
	for _, g := range s.n.host.Groups() {
		st := g.Status()
		part := int32(st.Group)
		if st.Group == replication.MetaGroup {
			part = -1
		}
		resp.Groups = append(resp.Groups, &gridpb.GroupStatus{
			Partition: part, State: st.State, Leader: st.LeaderID, Term: st.Term,
			AppliedIndex: st.Applied, CommitIndex: st.CommitIndex, LastLogIndex: st.LastLogIndex, Voters: st.Voters,
		})
	}
	resp.DiskBytes = s.n.diskUsed.get()
	resp.DiskFree, resp.DiskLow = s.n.disk.status()
	resp.Insecure = s.n.cfg.Insecure
	resp.Integrity = s.n.integrity.stats()
	return resp, nil
}

// diskUsage is the space the node's files take on disk (allocated blocks,
// so preallocated but unwritten value-log space does not count).
func diskUsage(dir string) uint64 {
	var total uint64
	_ = filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return nil
		}
		if st, ok := info.Sys().(*syscall.Stat_t); ok {
			total += uint64(st.Blocks) * 512
		} else {
			total += uint64(info.Size())
		}
		return nil
	})
	return total
}

// diskUsageMaxAge is how old the node's figure of its disk usage may be.
// Walking the data directory (a directory per partition, the engine's
// tables) was a tenth of an idle node's CPU at 256 partitions when every
// load report did it; the figure only feeds placement's size estimates
// and status, and the free-space guard reads the file system itself.
const diskUsageMaxAge = 30 * time.Second

// diskUsed is the data directory's usage, walked at most once per
// diskUsageMaxAge.
type diskUsed struct {
	dir   string
	mu    sync.Mutex
	at    time.Time
	bytes uint64
}

func (d *diskUsed) get() uint64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	if now := time.Now(); d.at.IsZero() || now.Sub(d.at) > diskUsageMaxAge {
		d.bytes, d.at = diskUsage(d.dir), now
	}
	return d.bytes
}
