package replication

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/status"

	"github.com/zerogrid/zerogrid/grid"
	"github.com/zerogrid/zerogrid/grid/gridpb"
)

const (
	// MaxRaftMessageBytes bounds one Raft message on the wire. The largest is
	// an AppendEntries batch: raft's default MaxAppendEntries (64) commands
	// of up to grid.DefaultLimits (1 MiB value + 4 KiB key) plus framing. A
	// node that raises the limits or MaxAppendEntries must keep
	// MaxAppendEntries × largest command under this. Snapshots are streamed
	// in chunks and never come near it.
	MaxRaftMessageBytes = 72 << 20

	// snapshotChunkBytes is the size of one InstallSnapshot data message.
	snapshotChunkBytes = 256 << 10

	// maxPipelineInflight bounds the AppendEntries requests in flight on one
	// pipeline (raft's NetworkTransport uses the same figure).
	maxPipelineInflight = 128

	// Client keepalive: ping an idle connection every keepaliveTime and drop
	// it if the ping is not answered within keepaliveTimeout, so a pipeline
	// to a peer that vanished (power cut, no RST) fails instead of hanging.
	// gRPC raises any client Time below 10s to 10s.
	keepaliveTime    = 10 * time.Second
	keepaliveTimeout = 5 * time.Second
	// keepaliveMinTime is the server's enforcement floor; it must not exceed
	// keepaliveTime or the server closes connections with "too_many_pings".
	keepaliveMinTime = 5 * time.Second

	defaultGRPCTimeout = 10 * time.Second
)

// ServerOptions returns the options the node's shared gRPC server must be
// built with for the Raft service: a keepalive enforcement policy that
// accepts the transport's client pings (also on connections with no active
// stream), server-side keepalive so dead peers' streams are reaped, and a
// receive limit large enough for AppendEntries batches.
func ServerOptions() []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{
			MinTime:             keepaliveMinTime,
			PermitWithoutStream: true,
		}),
		grpc.KeepaliveParams(keepalive.ServerParameters{
			Time:    keepaliveTime,
			Timeout: keepaliveTimeout,
		}),
		grpc.MaxRecvMsgSize(MaxRaftMessageBytes),
	}
}

// GRPCTransportConfig configures a node's Raft transport.
type GRPCTransportConfig struct {
	// LocalID is this node's id: its Raft ServerID in every group.
	LocalID string
	// LocalAddr is this node's gRPC address, shared by all its groups: its
	// Raft ServerAddress.
	LocalAddr string
	// Logger receives transport events; nil discards them.
	Logger *slog.Logger
	// DialOptions are appended to the transport's own (insecure transport
	// credentials, keepalive, fast reconnect backoff, message size limits),
	// so they override them, e.g. with TLS credentials.
	DialOptions []grpc.DialOption
	// Timeout bounds each unary RPC. InstallSnapshot gets Timeout per
	// 256 KiB of snapshot (at least Timeout), as raft's NetworkTransport
	// does. The pipeline stream has no deadline; keepalive guards it.
	Timeout time.Duration
	// OnPeerDown, if set, is called (on a goroutine of the transport's) when
	// the connection to a peer that was up breaks: the peer's process died
	// or closed the connection. Nodes pass it to Host.SuspectPeer.
	OnPeerDown func(addr string)
	// LivenessTimeout, if positive (and OnPeerDown is set), probes every
	// peer this node holds a connection to on its heartbeat stream a few
	// times per timeout, and reports a peer to OnPeerDown when nothing has
	// come back from it for this long while its connection stays up: a
	// paused process or a cut-off link, which no connection break reveals
	// (see probePeer).
	LivenessTimeout time.Duration
	// HeartbeatWindow is how long heartbeats to a peer are gathered into
	// one message (see transport_heartbeat.go). Zero: the default (20 ms);
	// negative: every heartbeat is sent at once, alone.
	HeartbeatWindow time.Duration
	// RefuseGrowth, if set, is asked before this node takes log entries
	// (AppendEntries carrying entries) or a snapshot from a leader; a
	// non-nil error turns the RPC away with ResourceExhausted, and the
	// leader retries it later with backoff. Nodes refuse while their data
	// disk is nearly full, so that a follower falls behind instead of
	// meeting ENOSPC halfway through a log append or an apply.
	RefuseGrowth func() error
	// AuthorizeSender, if set, is asked whether the caller of a Raft RPC
	// (its connection's credentials, in ctx) may speak as the server id
	// its message names; an error refuses the RPC with PermissionDenied,
	// or with the code of the gRPC status it carries.
	// Nodes check the caller's node certificate, so that one member's
	// certificate cannot be used to vote or append as another.
	AuthorizeSender func(ctx context.Context, id string) error
}

// DefaultGRPCTransportConfig returns a config with the default timeout;
// the caller fills in LocalID and LocalAddr.
func DefaultGRPCTransportConfig() GRPCTransportConfig {
	return GRPCTransportConfig{Timeout: defaultGRPCTimeout}
}

// Validate reports every problem with the config at once. A zero Timeout is
// accepted and means the default.
func (c GRPCTransportConfig) Validate() error {
	var errs []error
	if c.LocalID == "" {
		errs = append(errs, fmt.Errorf("%w: replication: grpc transport: LocalID is empty", grid.ErrBadConfig))
	}
	if c.LocalAddr == "" {
		errs = append(errs, fmt.Errorf("%w: replication: grpc transport: LocalAddr is empty", grid.ErrBadConfig))
	}
	if c.Timeout < 0 {
		errs = append(errs, fmt.Errorf("%w: replication: grpc transport: Timeout %v is negative", grid.ErrBadConfig, c.Timeout))
	}
	return errors.Join(errs...)
}

// GRPCTransport is a node's Raft transport: it multiplexes every Raft group
// of the node over one gRPC service (registered on the node's shared server)
// and one client connection per peer node, created on first use. Each
// group's raft.Transport is a view obtained with Transport.
//
// All methods are safe for concurrent use.
type GRPCTransport struct {
	cfg      GRPCTransportConfig
	logger   *slog.Logger
	dialOpts []grpc.DialOption

	// ctx is the parent of every outgoing call and stream; Close cancels it.
	ctx    context.Context
	cancel context.CancelFunc
	// wg counts the goroutines the transport started (pipeline receivers).
	wg sync.WaitGroup

	// mu guards the fields below. Lock order: GRPCTransport.mu, then
	// grpcGroup.mu; neither is held while calling into raft or gRPC.
	mu     sync.Mutex
	closed bool
	groups map[GroupID]*grpcGroup
	conns  map[raft.ServerAddress]*grpc.ClientConn
	// heartbeats holds one heartbeat batcher per peer (transport_heartbeat.go).
	heartbeats map[raft.ServerAddress]*hbPeer
	// hbSent counts requests sent on heartbeat streams (heartbeats and
	// pipelines' commit-index updates), hbBatches the messages carrying
	// them, hbAppends the commit-index updates among them.
	hbSent, hbBatches, hbAppends atomic.Uint64
}

var _ TransportFactory = (*GRPCTransport)(nil)

// NewGRPCTransport validates cfg and returns a transport with no
// connections yet. Call Register on the node's server to receive RPCs.
func NewGRPCTransport(cfg GRPCTransportConfig) (*GRPCTransport, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.HeartbeatWindow == 0 {
		cfg.HeartbeatWindow = defaultHeartbeatWindow
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = defaultGRPCTimeout
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	logger = logger.With("component", "raft-transport", "node", string(cfg.LocalID))
	dialOpts := []grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{
			Time:                keepaliveTime,
			Timeout:             keepaliveTimeout,
			PermitWithoutStream: true,
		}),
		// A restarted peer must be reachable again within an election or
		// two, not after gRPC's default two-minute backoff ceiling.
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff: backoff.Config{
				BaseDelay:  100 * time.Millisecond,
				Multiplier: 1.6,
				Jitter:     0.2,
				MaxDelay:   2 * time.Second,
			},
			MinConnectTimeout: 5 * time.Second,
		}),
		grpc.WithDefaultCallOptions(
			grpc.MaxCallSendMsgSize(MaxRaftMessageBytes),
			grpc.MaxCallRecvMsgSize(MaxRaftMessageBytes),
		),
	}
	dialOpts = append(dialOpts, cfg.DialOptions...)
	ctx, cancel := context.WithCancel(context.Background())
	return &GRPCTransport{
		cfg:        cfg,
		logger:     logger,
		dialOpts:   dialOpts,
		ctx:        ctx,
		cancel:     cancel,
		groups:     make(map[GroupID]*grpcGroup),
		conns:      make(map[raft.ServerAddress]*grpc.ClientConn),
		heartbeats: make(map[raft.ServerAddress]*hbPeer),
	}, nil
}

// TransportStats counts what went on the heartbeat streams: requests
// (heartbeats and idle leaders' commit-index updates), the messages that
// carried them, and the commit-index updates among them.
type TransportStats struct{ BatchedRequests, BatchMessages, BatchedCommitUpdates uint64 }

// Stats returns the transport's counters.
func (t *GRPCTransport) Stats() TransportStats {
	return TransportStats{BatchedRequests: t.hbSent.Load(), BatchMessages: t.hbBatches.Load(), BatchedCommitUpdates: t.hbAppends.Load()}
}

// Register registers the Raft service on the node's shared gRPC server
// (normally a *grpc.Server built with ServerOptions).
func (t *GRPCTransport) Register(s grpc.ServiceRegistrar) {
	gridpb.RegisterRaftServer(s, &raftService{t: t})
}

// Transport returns group g's raft.Transport, creating it on the first
// call and returning the same object until it is closed (raft closes it in
// Shutdown); after that a new one is created. The view implements
// raft.WithClose and raft.WithPreVote. Until a group's view exists, RPCs
// for that group arriving from peers are refused with codes.Unavailable.
func (t *GRPCTransport) Transport(g GroupID) raft.Transport {
	t.mu.Lock()
	defer t.mu.Unlock()
	if gt, ok := t.groups[g]; ok {
		return gt
	}
	gt := newGRPCGroup(t, g)
	if t.closed {
		gt.shutdown()
		return gt
	}
	t.groups[g] = gt
	return gt
}

// Close cancels every call and stream the transport started, closes every
// group view and peer connection, and waits (until ctx is done) for the
// transport's goroutines to finish. RPCs arriving afterwards are refused
// with codes.Unavailable; the gRPC server itself is the caller's to stop.
func (t *GRPCTransport) Close(ctx context.Context) error {
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return nil
	}
	t.closed = true
	groups := make([]*grpcGroup, 0, len(t.groups))
	for _, g := range t.groups {
		groups = append(groups, g)
	}
	conns := t.conns
	t.groups, t.conns = nil, nil
	t.mu.Unlock()

	t.cancel()
	for _, g := range groups {
		g.shutdown()
	}
	var errs []error
	for addr, cc := range conns {
		if err := cc.Close(); err != nil {
			errs = append(errs, fmt.Errorf("replication: close connection to %s: %w", addr, err))
		}
	}
	done := make(chan struct{})
	go func() {
		t.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-ctx.Done():
		errs = append(errs, fmt.Errorf("replication: grpc transport close: %w", ctx.Err()))
	}
	return errors.Join(errs...)
}

// goFunc runs f in a goroutine counted by t.wg, unless the transport is
// closed (then it returns false and f does not run).
func (t *GRPCTransport) goFunc(f func()) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return false
	}
	t.wg.Add(1)
	go func() {
		defer t.wg.Done()
		f()
	}()
	return true
}

// client returns a Raft client over the shared connection to target,
// creating the connection on first use.
func (t *GRPCTransport) client(target raft.ServerAddress) (gridpb.RaftClient, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return nil, raft.ErrTransportShutdown
	}
	cc, ok := t.conns[target]
	if !ok {
		var err error
		cc, err = grpc.NewClient(string(target), t.dialOpts...)
		if err != nil {
			return nil, fmt.Errorf("replication: connect to %s: %w", target, err)
		}
		t.conns[target] = cc
		t.logger.Debug("raft connection opened", "peer", string(target))
		if t.cfg.OnPeerDown != nil {
			t.wg.Add(1) // t.mu is held and t.closed is false: Close waits for it
			go func() {
				defer t.wg.Done()
				t.watchPeer(cc, string(target))
			}()
			if t.cfg.LivenessTimeout > 0 {
				t.wg.Add(1)
				go func() {
					defer t.wg.Done()
					t.probePeer(cc, target)
				}()
			}
		}
	}
	return gridpb.NewRaftClient(cc), nil
}

// watchPeer reports each break of an established connection to addr. It
// keeps the connection up (gRPC leaves an unused one idle), so that a peer
// this node only hears from is watched too.
func (t *GRPCTransport) watchPeer(cc *grpc.ClientConn, addr string) {
	cc.Connect()
	state := cc.GetState()
	for cc.WaitForStateChange(t.ctx, state) {
		next := cc.GetState()
		if next == connectivity.Idle {
			cc.Connect()
		}
		if state == connectivity.Ready && next != connectivity.Ready && next != connectivity.Shutdown && t.ctx.Err() == nil {
			t.logger.Info("raft peer connection broke; suspecting its node", "peer", addr, "state", next.String())
			t.cfg.OnPeerDown(addr)
		}
		state = next
	}
}

// lookup returns the view of group g for an incoming RPC, or a gRPC
// Unavailable error naming the group.
func (t *GRPCTransport) lookup(g GroupID) (*grpcGroup, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return nil, status.Errorf(codes.Unavailable, "replication: raft transport of node %s is closed", t.cfg.LocalID)
	}
	gt, ok := t.groups[g]
	if !ok {
		return nil, status.Errorf(codes.Unavailable, "replication: raft group %s (%d) is not running on node %s", g, uint32(g), t.cfg.LocalID)
	}
	return gt, nil
}

func (t *GRPCTransport) removeGroup(gt *grpcGroup) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.groups[gt.id] == gt {
		delete(t.groups, gt.id)
	}
}

// grpcGroup is one group's raft.Transport over a GRPCTransport.
type grpcGroup struct {
	t        *GRPCTransport
	id       GroupID
	consumer chan raft.RPC
	// heartbeat is raft's fast-path handler (nil until raft sets it).
	heartbeat atomic.Pointer[func(raft.RPC)]
	// urgentUntil (unix ns): until then the group's heartbeats skip the
	// batching window (a leadership confirmation for reads is waiting).
	urgentUntil atomic.Int64
	// done is closed when the view is closed.
	done      chan struct{}
	closeOnce sync.Once

	mu        sync.Mutex // guards pipelines
	pipelines map[*grpcPipeline]struct{}
}

// urgentHeartbeats makes the group's heartbeats of the next interval go
// out at once instead of waiting for the batching window.
func (g *grpcGroup) urgentHeartbeats(d time.Duration) {
	g.urgentUntil.Store(time.Now().Add(d).UnixNano())
	g.t.flushHeartbeats() // one of the group's may be waiting in a window
}

var (
	_ raft.Transport   = (*grpcGroup)(nil)
	_ raft.WithClose   = (*grpcGroup)(nil)
	_ raft.WithPreVote = (*grpcGroup)(nil)
)

func newGRPCGroup(t *GRPCTransport, g GroupID) *grpcGroup {
	return &grpcGroup{
		t:         t,
		id:        g,
		consumer:  make(chan raft.RPC),
		done:      make(chan struct{}),
		pipelines: make(map[*grpcPipeline]struct{}),
	}
}

// Consumer implements raft.Transport. The channel is never closed.
func (g *grpcGroup) Consumer() <-chan raft.RPC { return g.consumer }

// deliverLocal hands raft an RPC this node makes itself.
func (g *grpcGroup) deliverLocal(rpc raft.RPC, stop <-chan struct{}) bool {
	select {
	case g.consumer <- rpc:
		return true
	case <-g.done:
	case <-stop:
	}
	return false
}

// LocalAddr implements raft.Transport: the node's address, shared by all
// its groups.
func (g *grpcGroup) LocalAddr() raft.ServerAddress { return raft.ServerAddress(g.t.cfg.LocalAddr) }

// SetHeartbeatHandler implements raft.Transport: heartbeats are handed to cb
// on the RPC's own goroutine instead of queueing on Consumer.
func (g *grpcGroup) SetHeartbeatHandler(cb func(raft.RPC)) {
	if cb == nil {
		g.heartbeat.Store(nil)
		return
	}
	g.heartbeat.Store(&cb)
}

// EncodePeer implements raft.Transport.
func (g *grpcGroup) EncodePeer(_ raft.ServerID, addr raft.ServerAddress) []byte { return []byte(addr) }

// DecodePeer implements raft.Transport.
func (g *grpcGroup) DecodePeer(b []byte) raft.ServerAddress { return raft.ServerAddress(b) }

// Close implements raft.WithClose: it stops the group's pipelines and
// unregisters the group, so peers' RPCs for it are refused until
// Transport is called again. The shared connections stay open.
func (g *grpcGroup) Close() error {
	g.t.removeGroup(g)
	g.shutdown()
	return nil
}

func (g *grpcGroup) shutdown() {
	g.closeOnce.Do(func() {
		close(g.done)
		g.mu.Lock()
		ps := make([]*grpcPipeline, 0, len(g.pipelines))
		for p := range g.pipelines {
			ps = append(ps, p)
		}
		g.mu.Unlock()
		for _, p := range ps {
			_ = p.Close()
		}
	})
}

func (g *grpcGroup) isClosed() bool {
	select {
	case <-g.done:
		return true
	default:
		return false
	}
}

// call runs one unary RPC against target with the given timeout.
func (g *grpcGroup) call(target raft.ServerAddress, timeout time.Duration, method string,
	fn func(ctx context.Context, c gridpb.RaftClient) error) error {
	if g.isClosed() {
		return raft.ErrTransportShutdown
	}
	c, err := g.t.client(target)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(g.t.ctx, timeout)
	defer cancel()
	if err := fn(ctx, c); err != nil {
		return g.callError(method, target, err)
	}
	return nil
}

func (g *grpcGroup) callError(method string, target raft.ServerAddress, err error) error {
	if g.t.ctx.Err() != nil || g.isClosed() {
		return raft.ErrTransportShutdown
	}
	return fmt.Errorf("replication: raft %s to %s (group %s): %w", method, target, g.id, err)
}

// AppendEntries implements raft.Transport.
func (g *grpcGroup) AppendEntries(_ raft.ServerID, target raft.ServerAddress,
	args *raft.AppendEntriesRequest, resp *raft.AppendEntriesResponse) error {
	if isHeartbeat(args) {
		if g.isClosed() {
			return raft.ErrTransportShutdown
		}
		p, err := g.t.heartbeatPeer(target)
		if err != nil {
			return err
		}
		urgent := time.Now().UnixNano() < g.urgentUntil.Load()
		out, err := p.heartbeat(appendEntriesRequestToPB(g.id, args), urgent, g.t.cfg.Timeout)
		if err != nil {
			return g.callError("AppendEntries", target, err)
		}
		*resp = appendEntriesResponseFromPB(out)
		return nil
	}
	return g.call(target, g.t.cfg.Timeout, "AppendEntries", func(ctx context.Context, c gridpb.RaftClient) error {
		out, err := c.AppendEntries(ctx, appendEntriesRequestToPB(g.id, args))
		if err != nil {
			return err
		}
		*resp = appendEntriesResponseFromPB(out)
		return nil
	})
}

// RequestVote implements raft.Transport.
func (g *grpcGroup) RequestVote(_ raft.ServerID, target raft.ServerAddress,
	args *raft.RequestVoteRequest, resp *raft.RequestVoteResponse) error {
	return g.call(target, g.t.cfg.Timeout, "RequestVote", func(ctx context.Context, c gridpb.RaftClient) error {
		out, err := c.RequestVote(ctx, &gridpb.RaftRequestVoteRequest{
			Group:              uint32(g.id),
			Header:             headerToPB(args.RPCHeader),
			Term:               args.Term,
			Candidate:          args.Candidate,
			LastLogIndex:       args.LastLogIndex,
			LastLogTerm:        args.LastLogTerm,
			LeadershipTransfer: args.LeadershipTransfer,
		})
		if err != nil {
			return err
		}
		*resp = raft.RequestVoteResponse{
			RPCHeader: headerFromPB(out.GetHeader()),
			Term:      out.GetTerm(),
			Peers:     out.GetPeers(),
			Granted:   out.GetGranted(),
		}
		return nil
	})
}

// RequestPreVote implements raft.WithPreVote.
func (g *grpcGroup) RequestPreVote(_ raft.ServerID, target raft.ServerAddress,
	args *raft.RequestPreVoteRequest, resp *raft.RequestPreVoteResponse) error {
	return g.call(target, g.t.cfg.Timeout, "RequestPreVote", func(ctx context.Context, c gridpb.RaftClient) error {
		out, err := c.RequestPreVote(ctx, &gridpb.RaftRequestPreVoteRequest{
			Group:        uint32(g.id),
			Header:       headerToPB(args.RPCHeader),
			Term:         args.Term,
			LastLogIndex: args.LastLogIndex,
			LastLogTerm:  args.LastLogTerm,
		})
		if err != nil {
			return err
		}
		*resp = raft.RequestPreVoteResponse{
			RPCHeader: headerFromPB(out.GetHeader()),
			Term:      out.GetTerm(),
			Granted:   out.GetGranted(),
		}
		return nil
	})
}

// TimeoutNow implements raft.Transport.
func (g *grpcGroup) TimeoutNow(_ raft.ServerID, target raft.ServerAddress,
	args *raft.TimeoutNowRequest, resp *raft.TimeoutNowResponse) error {
	return g.call(target, g.t.cfg.Timeout, "TimeoutNow", func(ctx context.Context, c gridpb.RaftClient) error {
		out, err := c.TimeoutNow(ctx, &gridpb.RaftTimeoutNowRequest{
			Group:  uint32(g.id),
			Header: headerToPB(args.RPCHeader),
		})
		if err != nil {
			return err
		}
		*resp = raft.TimeoutNowResponse{RPCHeader: headerFromPB(out.GetHeader())}
		return nil
	})
}

// InstallSnapshot implements raft.Transport: the request goes first, then
// data in chunks of snapshotChunkBytes.
func (g *grpcGroup) InstallSnapshot(_ raft.ServerID, target raft.ServerAddress,
	args *raft.InstallSnapshotRequest, resp *raft.InstallSnapshotResponse, data io.Reader) error {
	timeout := g.t.cfg.Timeout * time.Duration(args.Size/snapshotChunkBytes)
	if timeout < g.t.cfg.Timeout {
		timeout = g.t.cfg.Timeout
	}
	return g.call(target, timeout, "InstallSnapshot", func(ctx context.Context, c gridpb.RaftClient) error {
		stream, err := c.InstallSnapshot(ctx)
		if err != nil {
			return err
		}
		first := &gridpb.RaftInstallSnapshotMessage{Msg: &gridpb.RaftInstallSnapshotMessage_Request{
			Request: &gridpb.RaftInstallSnapshotRequest{
				Group:              uint32(g.id),
				Header:             headerToPB(args.RPCHeader),
				SnapshotVersion:    int64(args.SnapshotVersion),
				Term:               args.Term,
				Leader:             args.Leader,
				LastLogIndex:       args.LastLogIndex,
				LastLogTerm:        args.LastLogTerm,
				Peers:              args.Peers,
				Configuration:      args.Configuration,
				ConfigurationIndex: args.ConfigurationIndex,
				Size:               args.Size,
			},
		}}
		if err := stream.Send(first); err != nil {
			return sendError(stream, err)
		}
		for {
			// A fresh buffer per chunk: gRPC may still hold a sent message.
			buf := make([]byte, snapshotChunkBytes)
			n, rerr := io.ReadFull(data, buf)
			if n > 0 {
				msg := &gridpb.RaftInstallSnapshotMessage{Msg: &gridpb.RaftInstallSnapshotMessage_Chunk{Chunk: buf[:n]}}
				if err := stream.Send(msg); err != nil {
					return sendError(stream, err)
				}
			}
			if rerr == io.EOF || rerr == io.ErrUnexpectedEOF {
				break
			}
			if rerr != nil {
				return fmt.Errorf("read snapshot: %w", rerr)
			}
		}
		out, err := stream.CloseAndRecv()
		if err != nil {
			return err
		}
		*resp = raft.InstallSnapshotResponse{
			RPCHeader: headerFromPB(out.GetHeader()),
			Term:      out.GetTerm(),
			Success:   out.GetSuccess(),
		}
		return nil
	})
}

// sendError turns a failed client-stream Send into the stream's real error:
// gRPC reports io.EOF from Send when the server ended the stream, and the
// status is then available from RecvMsg.
func sendError(stream grpc.ClientStream, err error) error {
	if err == io.EOF {
		var m gridpb.RaftInstallSnapshotResponse
		if rerr := stream.RecvMsg(&m); rerr != nil {
			return rerr
		}
	}
	return err
}

// AppendEntriesPipeline implements raft.Transport with one bidirectional
// stream per (peer, group).
func (g *grpcGroup) AppendEntriesPipeline(_ raft.ServerID, target raft.ServerAddress) (raft.AppendPipeline, error) {
	if g.isClosed() {
		return nil, raft.ErrTransportShutdown
	}
	c, err := g.t.client(target)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(g.t.ctx)
	stream, err := c.AppendEntriesPipeline(ctx)
	if err != nil {
		cancel()
		return nil, g.callError("AppendEntriesPipeline", target, err)
	}
	p := &grpcPipeline{
		g:        g,
		target:   target,
		stream:   stream,
		cancel:   cancel,
		inflight: make(chan *grpcAppendFuture, maxPipelineInflight),
		done:     make(chan raft.AppendFuture, maxPipelineInflight),
		shutdown: make(chan struct{}),
		broken:   make(chan struct{}),
		recvDone: make(chan struct{}),
	}
	g.mu.Lock()
	if g.isClosed() {
		g.mu.Unlock()
		cancel()
		return nil, raft.ErrTransportShutdown
	}
	g.pipelines[p] = struct{}{}
	g.mu.Unlock()
	if !g.t.goFunc(p.receive) {
		close(p.recvDone)
		_ = p.Close()
		return nil, raft.ErrTransportShutdown
	}
	return p, nil
}

func (g *grpcGroup) removePipeline(p *grpcPipeline) {
	g.mu.Lock()
	defer g.mu.Unlock()
	delete(g.pipelines, p)
}

// grpcPipeline is a raft.AppendPipeline over one bidirectional stream. The
// server answers in request order, so responses are matched to requests by
// position: AppendEntries queues each future on inflight before sending,
// and the receiver pairs each response with the oldest queued future.
//
// An idle leader sends every follower an AppendEntries without entries
// every CommitTimeout, only to carry its commit index. When nothing else is
// in flight on the pipeline, such a request goes on the peer's heartbeat
// stream instead (transport_heartbeat.go), in one message with other
// groups' heartbeats, so that a node's idle groups cost messages per peer,
// not per group. Its future still takes its place in inflight, and the
// receiver waits for its answer before reading the stream's next one, so
// raft sees answers in request order. The peer may handle it after
// requests sent on the stream later; that is harmless: with nothing in
// flight before it, its previous entry is one the follower already holds,
// it carries no entries to truncate or append, and raft never lowers a
// commit index.
type grpcPipeline struct {
	g      *grpcGroup
	target raft.ServerAddress
	stream gridpb.Raft_AppendEntriesPipelineClient
	cancel context.CancelFunc

	sendMu   sync.Mutex // serialises queue-then-send, so queue order is wire order
	inflight chan *grpcAppendFuture
	done     chan raft.AppendFuture
	// outstanding counts requests sent and not yet answered.
	outstanding atomic.Int64
	// held is the last request diverted to the peer's heartbeat stream
	// (under sendMu): a request sent behind it flushes that stream's
	// batch (heldOn's), so that it does not wait out the batching window.
	held   *grpcAppendFuture
	heldOn *hbPeer

	shutdown  chan struct{} // closed by Close
	closeOnce sync.Once
	broken    chan struct{} // closed by the receiver when the stream fails
	recvDone  chan struct{} // closed when the receiver has returned
}

var _ raft.AppendPipeline = (*grpcPipeline)(nil)

// AppendEntries implements raft.AppendPipeline. It blocks while
// maxPipelineInflight requests await responses.
func (p *grpcPipeline) AppendEntries(args *raft.AppendEntriesRequest, resp *raft.AppendEntriesResponse) (raft.AppendFuture, error) {
	f := &grpcAppendFuture{start: time.Now(), args: args, resp: resp, done: make(chan struct{})}
	req := appendEntriesRequestToPB(p.g.id, args)
	p.sendMu.Lock()
	defer p.sendMu.Unlock()
	select {
	case <-p.shutdown:
		return nil, raft.ErrPipelineShutdown
	case <-p.broken:
		return nil, fmt.Errorf("replication: raft pipeline to %s (group %s) failed", p.target, p.g.id)
	default:
	}
	f.batched = len(args.Entries) == 0 && p.outstanding.Load() == 0
	var hb *hbPeer
	if f.batched {
		var err error
		if hb, err = p.g.t.heartbeatPeer(p.target); err != nil {
			return nil, err
		}
	}
	select {
	case p.inflight <- f:
	case <-p.shutdown:
		return nil, raft.ErrPipelineShutdown
	case <-p.broken:
		return nil, fmt.Errorf("replication: raft pipeline to %s (group %s) failed", p.target, p.g.id)
	}
	p.outstanding.Add(1)
	if f.batched {
		p.sendBatched(hb, f, req)
		return f, nil
	}
	if h := p.held; h != nil {
		p.held = nil
		select {
		case <-h.done:
		default:
			p.heldOn.flush()
		}
	}
	if err := p.stream.Send(req); err != nil {
		// f stays queued; the receiver fails it when Recv reports the
		// stream's end.
		return nil, p.g.callError("AppendEntriesPipeline", p.target, err)
	}
	return f, nil
}

// sendBatched sends f's request on the peer's heartbeat stream; f fails
// if no answer comes within the transport's timeout. Called with sendMu
// held.
func (p *grpcPipeline) sendBatched(hb *hbPeer, f *grpcAppendFuture, req *gridpb.RaftAppendEntriesRequest) {
	var (
		mu       sync.Mutex
		timer    *time.Timer
		finished bool
	)
	finish := func(r hbResult) {
		mu.Lock()
		if finished {
			mu.Unlock()
			return
		}
		finished = true
		t := timer
		mu.Unlock()
		if t != nil {
			t.Stop()
		}
		if r.err == nil {
			*f.resp = appendEntriesResponseFromPB(r.resp)
		}
		f.respond(r.err)
	}
	seq := hb.send(req, false, finish)
	p.g.t.hbAppends.Add(1)
	mu.Lock()
	if !finished {
		timer = time.AfterFunc(p.g.t.cfg.Timeout, func() {
			if hb.forget(seq) {
				finish(hbResult{err: fmt.Errorf("replication: raft AppendEntries to %s (group %s) on the heartbeat stream: %w",
					p.target, p.g.id, context.DeadlineExceeded)})
			}
		})
	}
	mu.Unlock()
	p.held, p.heldOn = f, hb
}

// Consumer implements raft.AppendPipeline: futures arrive in request order.
func (p *grpcPipeline) Consumer() <-chan raft.AppendFuture { return p.done }

// Close implements raft.AppendPipeline: it cancels the stream and waits for
// the receiver to return. Futures not yet delivered are dropped.
func (p *grpcPipeline) Close() error {
	p.closeOnce.Do(func() {
		close(p.shutdown)
		p.cancel()
		<-p.recvDone
		p.g.removePipeline(p)
	})
	return nil
}

// receive pairs responses with queued futures until the stream fails or
// the pipeline is closed. A failed stream fails the next future and stops:
// raft abandons the pipeline at its first unsuccessful response.
func (p *grpcPipeline) receive() {
	defer close(p.recvDone)
	for {
		var f *grpcAppendFuture
		select {
		case f = <-p.inflight:
		case <-p.shutdown:
			return
		}
		if f.batched {
			select {
			case <-f.done:
			case <-p.shutdown:
				return
			}
			p.outstanding.Add(-1)
			select {
			case p.done <- f:
			case <-p.shutdown:
				return
			}
			continue
		}
		out, err := p.stream.Recv()
		p.outstanding.Add(-1)
		if err != nil {
			close(p.broken)
			if err == io.EOF {
				err = errors.New("stream ended by peer")
			}
			f.respond(p.g.callError("AppendEntriesPipeline", p.target, err))
			p.g.t.logger.Debug("raft pipeline ended", "peer", string(p.target), "group", p.g.id.String(), "err", err)
			select {
			case p.done <- f:
			case <-p.shutdown:
			}
			return
		}
		*f.resp = appendEntriesResponseFromPB(out)
		f.respond(nil)
		select {
		case p.done <- f:
		case <-p.shutdown:
			return
		}
	}
}

// grpcAppendFuture is a raft.AppendFuture of a pipelined request.
type grpcAppendFuture struct {
	// batched: the request went on the peer's heartbeat stream.
	batched bool
	start   time.Time
	args    *raft.AppendEntriesRequest
	resp    *raft.AppendEntriesResponse
	err     error
	done    chan struct{}
}

var _ raft.AppendFuture = (*grpcAppendFuture)(nil)

func (f *grpcAppendFuture) respond(err error) {
	f.err = err
	close(f.done)
}

// Error implements raft.Future.
func (f *grpcAppendFuture) Error() error {
	<-f.done
	return f.err
}

// Start implements raft.AppendFuture.
func (f *grpcAppendFuture) Start() time.Time { return f.start }

// Request implements raft.AppendFuture.
func (f *grpcAppendFuture) Request() *raft.AppendEntriesRequest { return f.args }

// Response implements raft.AppendFuture.
func (f *grpcAppendFuture) Response() *raft.AppendEntriesResponse { return f.resp }

// raftService is the server side: it decodes each RPC, finds its group and
// hands it to that group's raft (heartbeats straight to the fast-path
// handler, everything else through Consumer).
type raftService struct {
	gridpb.UnimplementedRaftServer
	t *GRPCTransport
}

// enqueue hands rpc to the group's raft and returns the channel its answer
// will arrive on.
func (s *raftService) enqueue(ctx context.Context, gt *grpcGroup, cmd any, r io.Reader) (<-chan raft.RPCResponse, error) {
	respCh := make(chan raft.RPCResponse, 1)
	rpc := raft.RPC{Command: cmd, Reader: r, RespChan: respCh}
	if ae, ok := cmd.(*raft.AppendEntriesRequest); ok && isHeartbeat(ae) {
		if fn := gt.heartbeat.Load(); fn != nil {
			(*fn)(rpc)
			return respCh, nil
		}
	}
	select {
	case gt.consumer <- rpc:
		return respCh, nil
	case <-ctx.Done():
		return nil, status.FromContextError(ctx.Err()).Err()
	case <-gt.done:
		return nil, status.Errorf(codes.Unavailable, "replication: raft group %s closed on node %s", gt.id, s.t.cfg.LocalID)
	}
}

// wait returns raft's answer to an enqueued RPC.
func (s *raftService) wait(ctx context.Context, gt *grpcGroup, respCh <-chan raft.RPCResponse) (any, error) {
	select {
	case r := <-respCh:
		if r.Error != nil {
			return nil, status.Errorf(codes.Unknown, "raft: %v", r.Error)
		}
		return r.Response, nil
	case <-ctx.Done():
		return nil, status.FromContextError(ctx.Err()).Err()
	case <-gt.done:
		return nil, status.Errorf(codes.Unavailable, "replication: raft group %s closed on node %s", gt.id, s.t.cfg.LocalID)
	}
}

// dispatch is enqueue then wait.
func (s *raftService) dispatch(ctx context.Context, group uint32, cmd any) (any, error) {
	gt, err := s.t.lookup(GroupID(group))
	if err != nil {
		return nil, err
	}
	return s.dispatchTo(ctx, gt, cmd)
}

// dispatchTo is dispatch to a group already looked up.
func (s *raftService) dispatchTo(ctx context.Context, gt *grpcGroup, cmd any) (any, error) {
	respCh, err := s.enqueue(ctx, gt, cmd, nil)
	if err != nil {
		return nil, err
	}
	return s.wait(ctx, gt, respCh)
}

func unexpectedResponse(got any) error {
	return status.Errorf(codes.Internal, "replication: raft answered with %T", got)
}

// checkSender is the AuthorizeSender hook as a gRPC status.
func (s *raftService) checkSender(ctx context.Context, h *gridpb.RaftHeader) error {
	if s.t.cfg.AuthorizeSender == nil {
		return nil
	}
	if err := s.t.cfg.AuthorizeSender(ctx, string(h.GetId())); err != nil {
		// A refusal that names its code (a revoked certificate:
		// Unauthenticated) keeps it; any other is PermissionDenied.
		code := codes.PermissionDenied
		if st, ok := status.FromError(err); ok && st.Code() != codes.Unknown {
			code = st.Code()
		}
		return status.Errorf(code, "replication: a Raft message as %q: %v", h.GetId(), err)
	}
	return nil
}

// refuseGrowth is the RefuseGrowth hook as a gRPC status.
func (s *raftService) refuseGrowth() error {
	if s.t.cfg.RefuseGrowth == nil {
		return nil
	}
	if err := s.t.cfg.RefuseGrowth(); err != nil {
		return status.Errorf(codes.ResourceExhausted, "replication: node %s takes no log entries now: %v", s.t.cfg.LocalID, err)
	}
	return nil
}

func (s *raftService) AppendEntries(ctx context.Context, req *gridpb.RaftAppendEntriesRequest) (*gridpb.RaftAppendEntriesResponse, error) {
	if err := s.checkSender(ctx, req.GetHeader()); err != nil {
		return nil, err
	}
	if len(req.GetEntries()) > 0 {
		if err := s.refuseGrowth(); err != nil {
			return nil, err
		}
	}
	out, err := s.dispatch(ctx, req.GetGroup(), appendEntriesRequestFromPB(req))
	if err != nil {
		return nil, err
	}
	resp, ok := out.(*raft.AppendEntriesResponse)
	if !ok {
		return nil, unexpectedResponse(out)
	}
	return appendEntriesResponseToPB(resp), nil
}

// AppendEntriesPipeline answers requests one at a time, in arrival order.
// The client has the next requests already on the wire, which is what
// hides the network round trip.
func (s *raftService) AppendEntriesPipeline(stream gridpb.Raft_AppendEntriesPipelineServer) error {
	ctx := stream.Context()
	for {
		req, err := stream.Recv()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		if err := s.checkSender(ctx, req.GetHeader()); err != nil {
			return err
		}
		if len(req.GetEntries()) > 0 {
			if err := s.refuseGrowth(); err != nil {
				return err
			}
		}
		out, err := s.dispatch(ctx, req.GetGroup(), appendEntriesRequestFromPB(req))
		if err != nil {
			return err
		}
		resp, ok := out.(*raft.AppendEntriesResponse)
		if !ok {
			return unexpectedResponse(out)
		}
		if err := stream.Send(appendEntriesResponseToPB(resp)); err != nil {
			return err
		}
	}
}

func (s *raftService) RequestVote(ctx context.Context, req *gridpb.RaftRequestVoteRequest) (*gridpb.RaftRequestVoteResponse, error) {
	if err := s.checkSender(ctx, req.GetHeader()); err != nil {
		return nil, err
	}
	out, err := s.dispatch(ctx, req.GetGroup(), &raft.RequestVoteRequest{
		RPCHeader:          headerFromPB(req.GetHeader()),
		Term:               req.GetTerm(),
		Candidate:          req.GetCandidate(),
		LastLogIndex:       req.GetLastLogIndex(),
		LastLogTerm:        req.GetLastLogTerm(),
		LeadershipTransfer: req.GetLeadershipTransfer(),
	})
	if err != nil {
		return nil, err
	}
	resp, ok := out.(*raft.RequestVoteResponse)
	if !ok {
		return nil, unexpectedResponse(out)
	}
	return &gridpb.RaftRequestVoteResponse{
		Header:  headerToPB(resp.RPCHeader),
		Term:    resp.Term,
		Peers:   resp.Peers,
		Granted: resp.Granted,
	}, nil
}

func (s *raftService) RequestPreVote(ctx context.Context, req *gridpb.RaftRequestPreVoteRequest) (*gridpb.RaftRequestPreVoteResponse, error) {
	if err := s.checkSender(ctx, req.GetHeader()); err != nil {
		return nil, err
	}
	out, err := s.dispatch(ctx, req.GetGroup(), &raft.RequestPreVoteRequest{
		RPCHeader:    headerFromPB(req.GetHeader()),
		Term:         req.GetTerm(),
		LastLogIndex: req.GetLastLogIndex(),
		LastLogTerm:  req.GetLastLogTerm(),
	})
	if err != nil {
		return nil, err
	}
	resp, ok := out.(*raft.RequestPreVoteResponse)
	if !ok {
		return nil, unexpectedResponse(out)
	}
	return &gridpb.RaftRequestPreVoteResponse{
		Header:  headerToPB(resp.RPCHeader),
		Term:    resp.Term,
		Granted: resp.Granted,
	}, nil
}

func (s *raftService) TimeoutNow(ctx context.Context, req *gridpb.RaftTimeoutNowRequest) (*gridpb.RaftTimeoutNowResponse, error) {
	if err := s.checkSender(ctx, req.GetHeader()); err != nil {
		return nil, err
	}
	out, err := s.dispatch(ctx, req.GetGroup(), &raft.TimeoutNowRequest{RPCHeader: headerFromPB(req.GetHeader())})
	if err != nil {
		return nil, err
	}
	resp, ok := out.(*raft.TimeoutNowResponse)
	if !ok {
		return nil, unexpectedResponse(out)
	}
	return &gridpb.RaftTimeoutNowResponse{Header: headerToPB(resp.RPCHeader)}, nil
}

// InstallSnapshot hands raft a reader fed from the stream's chunks. The
// chunks are received on this goroutine (a gRPC stream must not be read
// after its handler returns) and passed through a pipe; raft reads the
// reader to its end before answering, also when it refuses the snapshot.
func (s *raftService) InstallSnapshot(stream gridpb.Raft_InstallSnapshotServer) error {
	ctx := stream.Context()
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	req := first.GetRequest()
	if req == nil {
		return status.Error(codes.InvalidArgument, "replication: InstallSnapshot stream must start with the request")
	}
	if err := s.checkSender(ctx, req.GetHeader()); err != nil {
		return err
	}
	if err := s.refuseGrowth(); err != nil {
		return err
	}
	gt, err := s.t.lookup(GroupID(req.GetGroup()))
	if err != nil {
		return err
	}
	pr, pw := io.Pipe()
	cmd := &raft.InstallSnapshotRequest{
		RPCHeader:          headerFromPB(req.GetHeader()),
		SnapshotVersion:    raft.SnapshotVersion(req.GetSnapshotVersion()),
		Term:               req.GetTerm(),
		Leader:             req.GetLeader(),
		LastLogIndex:       req.GetLastLogIndex(),
		LastLogTerm:        req.GetLastLogTerm(),
		Peers:              req.GetPeers(),
		Configuration:      req.GetConfiguration(),
		ConfigurationIndex: req.GetConfigurationIndex(),
		Size:               req.GetSize(),
	}
	respCh, err := s.enqueue(ctx, gt, cmd, pr)
	if err != nil {
		_ = pr.Close()
		return err
	}
	feedErr := func() error {
		for {
			msg, err := stream.Recv()
			if err == io.EOF {
				return nil
			}
			if err != nil {
				return err
			}
			chunk, ok := msg.GetMsg().(*gridpb.RaftInstallSnapshotMessage_Chunk)
			if !ok {
				return status.Error(codes.InvalidArgument, "replication: InstallSnapshot request repeated mid-stream")
			}
			if _, err := pw.Write(chunk.Chunk); err != nil {
				return err
			}
		}
	}()
	// raft sees EOF, or the stream's error, and stops reading.
	_ = pw.CloseWithError(feedErr)
	out, err := s.wait(ctx, gt, respCh)
	if err != nil {
		return err
	}
	if feedErr != nil {
		return feedErr
	}
	resp, ok := out.(*raft.InstallSnapshotResponse)
	if !ok {
		return unexpectedResponse(out)
	}
	return stream.SendAndClose(&gridpb.RaftInstallSnapshotResponse{
		Header:  headerToPB(resp.RPCHeader),
		Term:    resp.Term,
		Success: resp.Success,
	})
}

// Conversions between raft's structs and the wire messages.

func headerToPB(h raft.RPCHeader) *gridpb.RaftHeader {
	return &gridpb.RaftHeader{ProtocolVersion: int64(h.ProtocolVersion), Id: h.ID, Addr: h.Addr}
}

func headerFromPB(h *gridpb.RaftHeader) raft.RPCHeader {
	return raft.RPCHeader{
		ProtocolVersion: raft.ProtocolVersion(h.GetProtocolVersion()),
		ID:              h.GetId(),
		Addr:            h.GetAddr(),
	}
}

func appendEntriesRequestToPB(g GroupID, r *raft.AppendEntriesRequest) *gridpb.RaftAppendEntriesRequest {
	out := &gridpb.RaftAppendEntriesRequest{
		Group:             uint32(g),
		Header:            headerToPB(r.RPCHeader),
		Term:              r.Term,
		Leader:            r.Leader,
		PrevLogEntry:      r.PrevLogEntry,
		PrevLogTerm:       r.PrevLogTerm,
		LeaderCommitIndex: r.LeaderCommitIndex,
	}
	if len(r.Entries) > 0 {
		logs := make([]gridpb.RaftLog, len(r.Entries))
		out.Entries = make([]*gridpb.RaftLog, len(r.Entries))
		for i, e := range r.Entries {
			l := &logs[i]
			l.Index = e.Index
			l.Term = e.Term
			l.Type = gridpb.RaftLogType(e.Type)
			l.Data = e.Data
			l.Extensions = e.Extensions
			if !e.AppendedAt.IsZero() {
				l.AppendedAtUnixNano = e.AppendedAt.UnixNano()
			}
			out.Entries[i] = l
		}
	}
	return out
}

func appendEntriesRequestFromPB(r *gridpb.RaftAppendEntriesRequest) *raft.AppendEntriesRequest {
	out := &raft.AppendEntriesRequest{
		RPCHeader:         headerFromPB(r.GetHeader()),
		Term:              r.GetTerm(),
		Leader:            r.GetLeader(),
		PrevLogEntry:      r.GetPrevLogEntry(),
		PrevLogTerm:       r.GetPrevLogTerm(),
		LeaderCommitIndex: r.GetLeaderCommitIndex(),
	}
	if es := r.GetEntries(); len(es) > 0 {
		logs := make([]raft.Log, len(es))
		out.Entries = make([]*raft.Log, len(es))
		for i, e := range es {
			l := &logs[i]
			l.Index = e.GetIndex()
			l.Term = e.GetTerm()
			l.Type = raft.LogType(e.GetType())
			l.Data = e.GetData()
			l.Extensions = e.GetExtensions()
			if ns := e.GetAppendedAtUnixNano(); ns != 0 {
				l.AppendedAt = time.Unix(0, ns)
			}
			out.Entries[i] = l
		}
	}
	return out
}

func appendEntriesResponseToPB(r *raft.AppendEntriesResponse) *gridpb.RaftAppendEntriesResponse {
	return &gridpb.RaftAppendEntriesResponse{
		Header:         headerToPB(r.RPCHeader),
		Term:           r.Term,
		LastLog:        r.LastLog,
		Success:        r.Success,
		NoRetryBackoff: r.NoRetryBackoff,
	}
}

func appendEntriesResponseFromPB(r *gridpb.RaftAppendEntriesResponse) raft.AppendEntriesResponse {
	return raft.AppendEntriesResponse{
		RPCHeader:      headerFromPB(r.GetHeader()),
		Term:           r.GetTerm(),
		LastLog:        r.GetLastLog(),
		Success:        r.GetSuccess(),
		NoRetryBackoff: r.GetNoRetryBackoff(),
	}
}
