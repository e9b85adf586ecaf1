package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/zerogrid/zerogrid/grid"
	"github.com/zerogrid/zerogrid/grid/gridpb"
	"github.com/zerogrid/zerogrid/grid/gridtls"
	"github.com/zerogrid/zerogrid/query"
	"github.com/zerogrid/zerogrid/replication"
)

// Version is the software version a node reports.
const Version = "0.1.0-dev"

// Node is one running zerogrid node.
type Node struct {
	cfg   Config
	log   *slog.Logger
	lis   net.Listener
	addr  string
	eng   replication.Engine
	trans *replication.GRPCTransport
	host  *replication.Host
	// suspects is host, for the transport's peer-down callback (which may
	// run before start has set host).
	suspects atomic.Pointer[replication.Host]
	// diskUsed is the data directory's usage, walked now and then.
	diskUsed *diskUsed
	srv      *grpc.Server // every service; Raft's too when insecure
	raftSrv  *grpc.Server // Raft, under TLS (see listen.go)
	split    *splitListener
	meta     *replication.Group
	static   *grid.Table // the table computed from the static peer list (empty when joining)
	caps     grid.Capabilities
	mgr      *manager
	// integrity scrubs and quarantines corrupt replicas.
	integrity *integrity
	// disk refuses growing writes when the data disk is nearly full.
	disk *diskGuard
	cpu  cpuMeter
	told atomic.Pointer[string] // the last thing the metadata leader told this node
	// retired is set once this node learns it was removed from the
	// cluster: it then refuses every request but Raft's.
	retired atomic.Bool

	conns peerConns
	sec   *security
	resp  *respServer // the Redis front door; nil unless Config.RESPListen
	// metrics is the node's Prometheus registry; ops serves it (and the
	// health checks) when Config.OpsListen is set (ops.go).
	metrics *metrics
	ops     *http.Server
	opsAddr string

	cancel  context.CancelFunc
	wg      sync.WaitGroup
	closing atomic.Bool
	fatal   chan error
}

// Start opens the node's storage, starts its Raft groups and serves gRPC.
// It returns once the node is serving; groups elect leaders in the background.
func Start(ctx context.Context, cfg Config) (*Node, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Functions == nil {
		cfg.Functions = query.NewRegistry()
	}
	sec, err := newSecurity(cfg)
	if err != nil {
		return nil, err
	}
	n := &Node{cfg: cfg, log: cfg.logger().With("node", cfg.ID), fatal: make(chan error, 1), sec: sec, diskUsed: &diskUsed{dir: cfg.DataDir}}
	n.conns.creds = sec.dialCreds()
	if cfg.Insecure {
		n.log.Warn("INSECURE: this node runs without TLS or authentication: anyone who can reach its port can read and write " +
			"every map, change the membership and run code on it. Use --tls-dir outside loopback experiments.")
	}
	n.integrity = newIntegrity(n)
	n.disk = newDiskGuard(n)
	n.metrics = newMetrics(n)
	if err := n.start(ctx); err != nil {
		n.cleanup()
		return nil, err
	}
	return n, nil
}

func (n *Node) start(ctx context.Context) error {
	cfg := &n.cfg
	n.static = &grid.Table{}
	if len(cfg.Peers) > 0 {
		t, err := bootstrapTable(cfg)
		if err != nil {
			return err
		}
		n.static = t
	}

	created := false
	if _, err := os.Stat(cfg.DataDir); errors.Is(err, os.ErrNotExist) {
		created = true
	}
	if err := os.MkdirAll(cfg.DataDir, 0o755); err != nil {
		return fmt.Errorf("node: data dir: %w", err)
	}
	aud, err := openAudit(cfg.ID, cfg.DataDir)
	if err != nil {
		return err
	}
	n.sec.audit = aud
	n.sec.log = n.log
	// A joining node with no Raft state yet must be admitted first; a
	// refused join leaves nothing behind.
	_, err = os.Stat(filepath.Join(cfg.DataDir, "raft", replication.MetaGroup.String()))
	joining := len(cfg.Join) > 0 && errors.Is(err, os.ErrNotExist)

	n.lis = cfg.Listener
	if n.lis == nil {
		n.lis, err = net.Listen("tcp", cfg.Listen)
		if err != nil {
			return fmt.Errorf("node: listen on %s: %w", cfg.Listen, err)
		}
	}
	if cfg.OpsListen != "" {
		n.lis = n.metrics.bytes.listener(n.lis)
	}
	n.addr = cfg.Peers[cfg.ID]
	if n.addr == "" {
		n.addr = n.lis.Addr().String()
	}
	n.caps, err = Probe(ctx, cfg.DataDir, cfg.Labels, Version)
	if err != nil {
		return fmt.Errorf("node: capability probe: %w", err)
	}
	if joining {
		if err := n.join(ctx); err != nil {
			if created {
				os.RemoveAll(cfg.DataDir)
			}
			return err
		}
	}

	n.eng, err = replication.OpenEngine(replication.EngineConfig{
		Dir: filepath.Join(cfg.DataDir, "engine"), Kind: cfg.Engine, Profile: engineProfile(cfg.Profile), SyncWrites: cfg.SyncEngineWrites,
	})
	if err != nil {
		return fmt.Errorf("node: open engine: %w", err)
	}
	n.trans, err = replication.NewGRPCTransport(replication.GRPCTransportConfig{LocalID: cfg.ID, LocalAddr: n.addr, Logger: n.log,
		DialOptions:     []grpc.DialOption{grpc.WithTransportCredentials(n.sec.dialCreds(gridtls.ALPNRaft))},
		HeartbeatWindow: cfg.timing().HeartbeatWindow(),
		LivenessTimeout: cfg.timing().Liveness,
		RefuseGrowth:    n.disk.refuseGrowth,
		AuthorizeSender: n.sec.authorizeSender,
		// A peer whose connection breaks, or that stays silent for
		// LivenessTimeout, is suspected: the local followers of the groups
		// it led campaign at once instead of after a full heartbeat timeout
		// (see replication.Host.SuspectPeer).
		OnPeerDown: func(addr string) {
			if h := n.suspects.Load(); h != nil {
				h.SuspectPeer(addr)
			}
		}})
	if err != nil {
		return fmt.Errorf("node: raft transport: %w", err)
	}
	// Stop must wait for running handlers: a task holds an engine view until
	// its handler returns, and the engine closes right after.
	server := func(opts ...grpc.ServerOption) *grpc.Server {
		unary := []grpc.UnaryServerInterceptor{n.sec.unary, n.refuseIfRetired}
		stream := []grpc.StreamServerInterceptor{n.sec.stream, n.refuseStreamIfRetired}
		base := []grpc.ServerOption{grpc.WaitForHandlers(true)}
		if cfg.OpsListen != "" {
			// Counted only when someone can read the counts. The metrics
			// interceptors come first, so they count what the caller sees
			// (the security interceptor makes every error a status).
			unary = slices.Insert(unary, 0, n.metrics.rpcs.UnaryServerInterceptor())
			stream = slices.Insert(stream, 0, n.metrics.rpcs.StreamServerInterceptor())
		}
		base = append(base, grpc.ChainUnaryInterceptor(unary...), grpc.ChainStreamInterceptor(stream...))
		return grpc.NewServer(slices.Concat(replication.ServerOptions(), base, opts)...)
	}
	if n.sec.tls == nil {
		// One server: Raft's receive limit for every service (the
		// interceptor holds each method to its own once a message is read).
		n.srv = server(grpc.Creds(insecure.NewCredentials()), grpc.InTapHandle(n.sec.tap))
		n.trans.Register(n.srv)
	} else {
		n.split = newSplitListener(n.lis, n.sec.tls.ServerConfig(), n.log)
		n.raftSrv = server(grpc.Creds(handshaken{}), grpc.InTapHandle(n.sec.raftTap))
		n.trans.Register(n.raftSrv)
		n.srv = server(grpc.Creds(handshaken{}), grpc.InTapHandle(n.sec.tap), grpc.MaxRecvMsgSize(n.sec.limits.server()),
			grpc.UnknownServiceHandler(notServedHere))
	}
	registerServices(n.srv, n)

	n.host, err = replication.NewHost(replication.HostConfig{
		NodeID: cfg.ID, Dir: filepath.Join(cfg.DataDir, "raft"), Engine: n.eng, Transports: n.trans,
		Timing: cfg.timing(), Logger: n.log, Fatal: n.onFatal, OnCorrupt: n.integrity.onCorrupt,
		WatchRetention: cfg.watchRetention(),
	})
	if err != nil {
		return fmt.Errorf("node: raft host: %w", err)
	}
	n.suspects.Store(n.host)

	n.meta, err = n.host.OpenGroup(ctx, replication.MetaGroup, replication.KindMeta, metaServers(n.static.Nodes))
	if err != nil {
		return fmt.Errorf("node: metadata group: %w", err)
	}
	n.mgr = newManager(n)
	// Serve before opening the partitions so peers' votes and heartbeats
	// are answered as soon as their raft starts; handlers may then use the
	// metadata group and the manager.
	serve := func(srv *grpc.Server, lis net.Listener) {
		n.wg.Add(1)
		go func() {
			defer n.wg.Done()
			if err := srv.Serve(lis); err != nil && !n.closing.Load() {
				n.log.Error("grpc server stopped", "err", err)
			}
		}()
	}
	if n.split == nil {
		serve(n.srv, n.lis)
	} else {
		n.split.start()
		serve(n.raftSrv, n.split.raft)
		serve(n.srv, n.split.other)
	}
	if err := n.startOps(); err != nil {
		return err
	}

	if n.meta.Meta().Table() == nil && len(n.static.Partitions) > 0 {
		// A founding node of a new cluster: every founder bootstraps each of
		// its partitions with the same voters, from the same static table.
		for _, p := range n.static.PartitionsOf(cfg.ID) {
			var servers []replication.Member
			for _, id := range n.static.Partitions[p].Replicas {
				nd, _ := n.static.Node(id)
				servers = append(servers, replication.Member{ID: id, Addr: nd.Addr, Voter: true})
			}
			if _, err := n.host.OpenGroup(ctx, replication.GroupID(p), replication.KindData, servers); err != nil && !errors.Is(err, replication.ErrQuarantined) {
				return fmt.Errorf("node: partition %d: %w", p, err)
			}
		}
	} else if err := n.syncGroups(ctx); err != nil {
		return err
	}

	loopCtx, cancel := context.WithCancel(context.Background())
	n.cancel = cancel
	n.goLoop(func() { n.agentLoop(loopCtx) })
	n.goLoop(func() { n.mgr.loop(loopCtx) })
	n.goLoop(func() { n.integrity.loop(loopCtx) })
	n.goLoop(func() { n.integrity.scrubLoop(loopCtx) })
	n.goLoop(func() { n.disk.loop(loopCtx) })
	n.goLoop(func() { n.sweepLoop(loopCtx) })
	if joining {
		// Wait for the metadata log to reach this node, so the node serves
		// with a partition table.
		for n.meta.Meta().SharedTable() == nil {
			select {
			case <-ctx.Done():
				return fmt.Errorf("node: waiting for the cluster's metadata: %w", ctx.Err())
			case <-time.After(20 * time.Millisecond):
			}
		}
	}
	if cfg.RESPListen != "" {
		if n.resp, err = newRESPServer(n); err != nil {
			return err
		}
		n.resp.start()
	}
	n.log.Info("node started", "addr", n.addr, "partitions", len(n.table().Hosts(cfg.ID)), "joined", joining)
	return nil
}

// bootstrapTable is the table a founding node starts from: the placement of
// the static peers, all active, before any node has announced itself. Every
// founder computes the same one.
func bootstrapTable(cfg *Config) (*grid.Table, error) {
	recs := make([]grid.NodeRecord, 0, len(cfg.Peers))
	for _, nd := range cfg.nodes() {
		recs = append(recs, grid.NodeRecord{Node: nd, State: grid.StateActive})
	}
	pol := cfg.policy()
	pol.Partitions = cfg.Partitions
	plan, err := grid.Desired(recs, nil, pol)
	if err != nil {
		return nil, fmt.Errorf("node: initial placement: %w", err)
	}
	return plan.Table, nil
}

// goLoop runs f on a goroutine the node owns.
func (n *Node) goLoop(f func()) {
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		f()
	}()
}

// engineProfile: the engine runs its low-memory profile under every node
// profile, as DESIGN.md asks (badger's stock options alone allocate a 64 MB
// memtable at open and ~600 MB at 1M keys).
func engineProfile(string) string { return "small" }

// metaServers: up to 5 (an odd number of) voters chosen by id; the rest
// follow as non-voters, so every node has the metadata locally.
func metaServers(nodes []grid.Node) []replication.Member {
	voters := len(nodes)
	switch {
	case voters >= 5:
		voters = 5
	case voters >= 3:
		voters = 3
	}
	out := make([]replication.Member, 0, len(nodes))
	for i, nd := range nodes {
		out = append(out, replication.Member{ID: nd.ID, Addr: nd.Addr, Voter: i < voters})
	}
	return out
}

// Addr is the node's advertised gRPC address.
func (n *Node) Addr() string { return n.addr }

// ID is the node's id.
func (n *Node) ID() string { return n.cfg.ID }

// RESPAddr is the address of the node's Redis front door, "" without one.
func (n *Node) RESPAddr() string {
	if n.resp == nil {
		return ""
	}
	return n.resp.Addr().String()
}

// Fatal delivers an unrecoverable storage error; the daemon exits on it.
func (n *Node) Fatal() <-chan error { return n.fatal }

func (n *Node) onFatal(err error) {
	n.log.Error("fatal storage error", "err", err)
	select {
	case n.fatal <- err:
	default:
	}
}

// table is the committed partition table, or the static one until the
// metadata group has committed it (an empty one on a joining node). It is shared: callers must not modify it.
func (n *Node) table() *grid.Table {
	if t := n.meta.Meta().SharedTable(); t != nil {
		return t
	}
	return n.static
}

// Shutdown stops the node: Raft groups first, then the server, the
// transport and the engine. It waits for every goroutine it started.
func (n *Node) Shutdown(ctx context.Context) error {
	if n.closing.Swap(true) {
		return nil
	}
	return n.cleanup()
}

func (n *Node) cleanup() error {
	n.closing.Store(true)
	if n.cancel != nil {
		n.cancel()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var errs []error
	n.stopOps(ctx)
	if n.resp != nil {
		n.resp.close() // its commands use the groups and the peer connections
	}
	if n.host != nil {
		errs = append(errs, n.host.Close(ctx))
	}
	if n.split != nil {
		n.split.close() // closes n.lis
	}
	if n.raftSrv != nil {
		n.raftSrv.Stop()
	}
	if n.srv != nil {
		n.srv.Stop()
	} else if n.lis != nil {
		n.lis.Close()
	}
	if n.trans != nil {
		errs = append(errs, n.trans.Close(ctx))
	}
	n.conns.close()
	if n.sec.audit != nil {
		n.sec.audit.close()
	}
	n.wg.Wait()
	if n.eng != nil {
		errs = append(errs, n.eng.Close())
	}
	return errors.Join(errs...)
}

// peerConns keeps one client connection per peer address for forwarding
// admin requests to the metadata leader.
type peerConns struct {
	creds credentials.TransportCredentials

	mu    sync.Mutex
	conns map[string]*grpc.ClientConn
}

func (p *peerConns) get(addr string) (*grpc.ClientConn, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if c, ok := p.conns[addr]; ok {
		return c, nil
	}
	c, err := grpc.NewClient(addr, grpc.WithTransportCredentials(p.creds))
	if err != nil {
		return nil, fmt.Errorf("node: dial %s: %w", addr, err)
	}
	if p.conns == nil {
		p.conns = map[string]*grpc.ClientConn{}
	}
	p.conns[addr] = c
	return c, nil
}

func (p *peerConns) close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
}

// registerServices registers the node's client-facing and internal
// services (the Raft transport registers its own). Every method of them
// must have a role in roleFor.
func registerServices(srv grpc.ServiceRegistrar, n *Node) {
	svc := &service{n: n}
	gridpb.RegisterKVServer(srv, svc)
	gridpb.RegisterAdminServer(srv, svc)
	gridpb.RegisterComputeServer(srv, &computeService{s: svc})
	gridpb.RegisterClusterServer(srv, &clusterService{s: svc})
	gridpb.RegisterLockServer(srv, &lockService{s: svc})
	gridpb.RegisterBackupServer(srv, &backupService{s: svc})
	gridpb.RegisterIntegrityServer(srv, &integrityService{s: svc})
	gridpb.RegisterWatchServer(srv, &watchService{s: svc})
}
