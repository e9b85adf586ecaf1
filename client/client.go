package client

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"sync/atomic"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/zerogrid/zerogrid/grid"
	"github.com/zerogrid/zerogrid/grid/gridpb"
	"github.com/zerogrid/zerogrid/grid/gridtls"
)

// Client talks to one zerogrid cluster. It is safe for concurrent use.
type Client struct {
	opts     options
	log      *slog.Logger
	dialOpts []grpc.DialOption
	clientID uint64
	seq      atomic.Uint64 // one number per logical write
	spread   atomic.Uint64 // rotates stale reads over replicas
	seeds    []string

	// refreshMu serialises table fetches. Lock order: refreshMu, then mu.
	refreshMu sync.Mutex

	mu      sync.Mutex // guards the fields below
	closed  bool
	conns   map[string]*grpc.ClientConn // by node address
	table   *grid.Table                 // as last fetched; never modified
	addrs   map[string]string           // node id → address, from table
	leaders []target                    // per partition: the leader as far as we know, or zero
}

// target is one node a request can go to.
type target struct {
	id   string // may be empty for a seed address
	addr string
}

// Dial connects to the cluster that any of addrs belongs to, with default
// options. It returns once it has the partition table.
func Dial(ctx context.Context, addrs ...string) (*Client, error) {
	return DialWith(ctx, addrs)
}

// DialWith is Dial with options.
func DialWith(ctx context.Context, addrs []string, opts ...Option) (*Client, error) {
	o := defaultOptions()
	for _, opt := range opts {
		opt(&o)
	}
	var errs []error
	seeds := make([]string, 0, len(addrs))
	seen := map[string]bool{}
	for _, a := range addrs {
		if a == "" {
			errs = append(errs, fmt.Errorf("%w: empty node address", grid.ErrBadConfig))
			continue
		}
		if !seen[a] {
			seen[a] = true
			seeds = append(seeds, a)
		}
	}
	if len(addrs) == 0 {
		errs = append(errs, fmt.Errorf("%w: no node address to dial", grid.ErrBadConfig))
	}
	errs = append(errs, o.validate())
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	id := o.clientID
	for id == 0 {
		var b [8]byte
		if _, err := rand.Read(b[:]); err != nil {
			return nil, fmt.Errorf("client: random client id: %w", err)
		}
		id = binary.LittleEndian.Uint64(b[:])
	}
	creds := insecure.NewCredentials()
	var secOpts []grpc.DialOption
	switch {
	case o.tokenFile != "" && o.tlsDir == "":
		return nil, fmt.Errorf("%w: a token needs TLS: WithTLSDir naming a directory with the cluster's ca.crt", grid.ErrBadConfig)
	case o.tokenFile != "":
		m, err := gridtls.LoadCA(o.tlsDir)
		if err != nil {
			return nil, fmt.Errorf("%w: %v", grid.ErrBadConfig, err)
		}
		tc, err := gridtls.TokenCreds(o.tokenFile)
		if err != nil {
			return nil, fmt.Errorf("%w: %v", grid.ErrBadConfig, err)
		}
		creds = credentials.NewTLS(m.ClientConfig())
		secOpts = append(secOpts, grpc.WithPerRPCCredentials(tc))
	case o.tlsDir != "":
		m, err := gridtls.LoadClient(o.tlsDir)
		if err != nil {
			return nil, fmt.Errorf("%w: %v", grid.ErrBadConfig, err)
		}
		creds = credentials.NewTLS(m.ClientConfig())
	}
	c := &Client{
		opts: o,
		log:  o.logger,
		dialOpts: append(append([]grpc.DialOption{
			grpc.WithTransportCredentials(creds),
			grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxRecvMsgBytes)),
		}, secOpts...), o.dialOpts...),
		clientID: id,
		seeds:    seeds,
		conns:    map[string]*grpc.ClientConn{},
	}
	if _, err := c.fetchTable(ctx); err != nil {
		_ = c.Close()
		return nil, fmt.Errorf("client: dial %v: %w", seeds, err)
	}
	return c, nil
}

// Close closes every connection. Calls in flight fail; later calls return
// ErrClosed.
func (c *Client) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil
	}
	c.closed = true
	var errs []error
	for addr, cc := range c.conns {
		if err := cc.Close(); err != nil {
			errs = append(errs, fmt.Errorf("client: close connection to %s: %w", addr, err))
		}
	}
	c.conns = nil
	return errors.Join(errs...)
}

// Map returns a handle on the named map. The name is checked when the handle
// is used; a map must have been created (CreateMap) before it holds data.
func (c *Client) Map(name string) *Map { return &Map{c: c, name: name} }

// CreateMap creates a map in the cluster. It fails with ErrMapExists if the
// map is there already.
func (c *Client) CreateMap(ctx context.Context, name string) error {
	if err := grid.ValidateMapName(name); err != nil {
		return err
	}
	req := &gridpb.CreateMapRequest{Name: name}
	return c.runCluster(ctx, "create map", true, func(ctx context.Context, cc *grpc.ClientConn, _ target, opts ...grpc.CallOption) error {
		_, err := gridpb.NewAdminClient(cc).CreateMap(ctx, req, opts...)
		return err
	})
}

// ListMaps returns the names of the cluster's maps.
func (c *Client) ListMaps(ctx context.Context) ([]string, error) {
	var names []string
	err := c.runCluster(ctx, "list maps", false, func(ctx context.Context, cc *grpc.ClientConn, _ target, opts ...grpc.CallOption) error {
		r, err := gridpb.NewAdminClient(cc).ListMaps(ctx, &gridpb.ListMapsRequest{}, opts...)
		if err != nil {
			return err
		}
		names = r.GetNames()
		return nil
	})
	return names, err
}

// Table fetches the partition table from the cluster, updates the client's
// routing with it and returns a copy.
func (c *Client) Table(ctx context.Context) (*grid.Table, error) {
	t, err := c.fetchTable(ctx)
	if err != nil {
		return nil, err
	}
	return t.Clone(), nil
}

// NodeStatus asks the node at addr (which need not be in the table) about
// itself and the Raft groups it hosts. It is not retried: it is about that
// node.
func (c *Client) NodeStatus(ctx context.Context, addr string) (*gridpb.StatusResponse, error) {
	cc, err := c.conn(addr)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, clusterAttemptTimeout)
	defer cancel()
	r, err := gridpb.NewAdminClient(cc).Status(ctx, &gridpb.StatusRequest{})
	if err != nil {
		return nil, fmt.Errorf("client: status of %s: %w", addr, gridpb.FromStatus(err))
	}
	return r, nil
}

// NodeAudit reads the last limit records of one node's audit log (0: the
// node's default, 1000), oldest first. It needs the admin role.
func (c *Client) NodeAudit(ctx context.Context, addr string, limit int) ([]grid.AuditRecord, error) {
	cc, err := c.conn(addr)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, clusterAttemptTimeout)
	defer cancel()
	r, err := gridpb.NewAdminClient(cc).Audit(ctx, &gridpb.AuditRequest{Limit: uint32(max(limit, 0))})
	if err != nil {
		return nil, fmt.Errorf("client: audit log of %s: %w", addr, gridpb.FromStatus(err))
	}
	var out []grid.AuditRecord
	if err := json.Unmarshal(r.GetRecordsJson(), &out); err != nil {
		return nil, fmt.Errorf("client: audit log of %s: %w", addr, err)
	}
	return out, nil
}

// conn returns the connection to addr, creating it on first use. gRPC
// connects lazily, so this does no I/O.
func (c *Client) conn(addr string) (*grpc.ClientConn, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, grid.ErrClosed
	}
	if cc, ok := c.conns[addr]; ok {
		return cc, nil
	}
	cc, err := grpc.NewClient(addr, c.dialOpts...)
	if err != nil {
		return nil, fmt.Errorf("client: connect to %s: %w", addr, err)
	}
	c.conns[addr] = cc
	return cc, nil
}

// fetchTable gets the table from any node, retrying, and installs it.
func (c *Client) fetchTable(ctx context.Context) (*grid.Table, error) {
	var t *grid.Table
	err := c.runCluster(ctx, "get table", false, func(ctx context.Context, cc *grpc.ClientConn, tg target, opts ...grpc.CallOption) error {
		r, err := gridpb.NewAdminClient(cc).GetTable(ctx, &gridpb.GetTableRequest{}, opts...)
		if err != nil {
			return err
		}
		t, err = tableFromProto(r)
		if err != nil {
			return fmt.Errorf("client: table from %s: %w", tg.addr, err)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	c.install(t)
	return t, nil
}

// refreshTable makes one pass over the known nodes for a newer table. It is
// called from inside a request's retry loop, which does the backing off; a
// failure is only logged, since the request goes on with the table it has.
func (c *Client) refreshTable(ctx context.Context) {
	c.mu.Lock()
	before := c.table
	c.mu.Unlock()

	c.refreshMu.Lock()
	defer c.refreshMu.Unlock()
	c.mu.Lock()
	changed := c.table != before // someone refreshed while we waited
	c.mu.Unlock()
	if changed {
		return
	}
	for _, tg := range c.nodeTargets() {
		cc, err := c.conn(tg.addr)
		if err != nil {
			return
		}
		actx, cancel := ctx, context.CancelFunc(func() {})
		if d := c.opts.retry.AttemptTimeout; d > 0 {
			actx, cancel = context.WithTimeout(ctx, d)
		}
		r, err := gridpb.NewAdminClient(cc).GetTable(actx, &gridpb.GetTableRequest{})
		cancel()
		if err == nil {
			var t *grid.Table
			if t, err = tableFromProto(r); err == nil {
				c.install(t)
				return
			}
		}
		if ctx.Err() != nil {
			return
		}
		c.log.Warn("client: table refresh failed", "node", tg.addr, "err", gridpb.FromStatus(err))
	}
}

// install makes t the routing table, unless it is older than the one held.
// Leaders come from t where it names them; otherwise a leader learnt from a
// hint is kept while it still holds a replica.
func (c *Client) install(t *grid.Table) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.table != nil && t.Epoch < c.table.Epoch {
		return
	}
	addrs := make(map[string]string, len(t.Nodes))
	for _, n := range t.Nodes {
		addrs[n.ID] = n.Addr
	}
	leaders := make([]target, len(t.Partitions))
	for i, p := range t.Partitions {
		if p.Leader != "" && addrs[p.Leader] != "" {
			leaders[i] = target{id: p.Leader, addr: addrs[p.Leader]}
			continue
		}
		if i < len(c.leaders) {
			if old := c.leaders[i]; old.addr != "" && contains(p.Replicas, old.id) {
				leaders[i] = target{id: old.id, addr: addrs[old.id]}
			}
		}
	}
	if c.table == nil || c.table.Epoch != t.Epoch {
		c.log.Debug("client: partition table installed", "epoch", t.Epoch, "partitions", len(t.Partitions), "nodes", len(t.Nodes))
	}
	c.table, c.addrs, c.leaders = t, addrs, leaders
}

func tableFromProto(r *gridpb.TableResponse) (*grid.Table, error) {
	t := &grid.Table{Epoch: r.GetEpoch(), Replicas: int(r.GetReplicas())}
	for _, n := range r.GetNodes() {
		t.Nodes = append(t.Nodes, grid.Node{ID: n.GetId(), Addr: n.GetAddr()})
	}
	for _, p := range r.GetPartitions() {
		t.Partitions = append(t.Partitions, grid.Partition{
			ID: int(p.GetId()), Replicas: append([]string(nil), p.GetReplicas()...), Leader: p.GetLeader(),
			Learner: p.GetLearner(), Leaving: p.GetLeaving(), Repair: p.GetRepair(),
		})
	}
	for _, r := range r.GetRecoveries() {
		t.Recoveries = append(t.Recoveries, grid.Recovery{Partition: int(r.GetPartition()), From: r.GetFrom(), Lost: r.GetLost(),
			AtUnixMs: r.GetAtUnixMs(), Epoch: r.GetEpoch(), Operator: r.GetOperator(), PossiblyLost: r.GetPossiblyLost()})
	}
	sort.Slice(t.Partitions, func(i, j int) bool { return t.Partitions[i].ID < t.Partitions[j].ID })
	if len(t.Partitions) == 0 {
		return nil, fmt.Errorf("%w: partition table has no partitions", grid.ErrBadRequest)
	}
	if err := t.Validate(); err != nil {
		return nil, err
	}
	return t, nil
}

// numPartitions is the partition count of the table held.
func (c *Client) numPartitions() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.table.NumPartitions()
}

// nodeTargets lists the table's nodes, then any seed address not among them.
func (c *Client) nodeTargets() []target {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []target
	seen := map[string]bool{}
	if c.table != nil {
		for _, n := range c.table.Nodes {
			if !seen[n.Addr] {
				seen[n.Addr] = true
				out = append(out, target{id: n.ID, addr: n.Addr})
			}
		}
	}
	for _, a := range c.seeds {
		if !seen[a] {
			seen[a] = true
			out = append(out, target{addr: a})
		}
	}
	return out
}

// setLeader records a leader learnt from a hint.
func (c *Client) setLeader(part int, t target) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if part >= 0 && part < len(c.leaders) {
		c.leaders[part] = t
	}
}

// forgetLeader drops the cached leader of part if it is t, which just failed.
func (c *Client) forgetLeader(part int, t target) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if part >= 0 && part < len(c.leaders) && c.leaders[part].addr == t.addr {
		c.leaders[part] = target{}
	}
}

// resolve turns a NotLeader hint into a target, or the zero target if the
// hint names no reachable leader.
func (c *Client) resolve(nl *grid.NotLeaderError) target {
	if nl.LeaderAddr != "" {
		return target{id: nl.LeaderID, addr: nl.LeaderAddr}
	}
	if nl.LeaderID == "" {
		return target{}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return target{id: nl.LeaderID, addr: c.addrs[nl.LeaderID]}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
