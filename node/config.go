package node

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sort"
	"strings"
	"time"

	"github.com/zerogrid/zerogrid/grid"
	"github.com/zerogrid/zerogrid/query"
	"github.com/zerogrid/zerogrid/replication"
)

// Config configures one node.
type Config struct {
	// ID names the node; unique in the cluster.
	ID string
	// Listen is the gRPC address to listen on (host:port). Ignored when
	// Listener is set.
	Listen string
	// Listener, if set, is used instead of opening Listen (tests pass a
	// listener on 127.0.0.1:0 so ports are known before nodes start).
	Listener net.Listener
	// DataDir holds the engine and the Raft logs.
	DataDir string
	// Peers is the static initial cluster: node id → address, this node
	// included. Only the founding nodes of a cluster have peers; a node that
	// joins a running cluster has Join instead.
	Peers map[string]string
	// Join lists addresses of running members to join through (any member
	// forwards to the metadata leader). Ignored once the node has joined:
	// a restart uses the state on disk.
	Join []string
	// JoinToken is the cluster's join secret. Founding nodes that set it
	// admit joiners presenting the same token; a cluster founded without a
	// token refuses every join.
	JoinToken string
	// Labels are operator labels the node announces (zone=..., rack=...,
	// storage=false for a compute-only node).
	Labels map[string]string
	// ReportInterval is how often the node reports its load to the
	// metadata leader; 0: by profile.
	ReportInterval time.Duration
	// DeadAfter is how long a node may stay silent before the metadata
	// leader declares it dead and re-creates its replicas elsewhere; it is
	// suspect (no new replicas) after a third of that. 0: by profile.
	DeadAfter time.Duration
	// Partitions is the fixed partition count, decided when the cluster is
	// created.
	Partitions int
	// Replicas is the number of copies of each partition.
	Replicas int
	// Profile is "default", "small" (a Pi Zero) or "test" (fast elections).
	Profile string
	// Engine is "badger", "bbolt" or "" for the platform default.
	Engine string
	// SyncEngineWrites makes every engine batch durable on its own (the
	// Raft log already is; off by default).
	SyncEngineWrites bool
	// Limits bound keys and values.
	Limits grid.Limits
	// Logger receives the node's logs; nil discards them.
	Logger *slog.Logger
	// Functions are the Go functions jobs may name (registered by a custom
	// node binary); nil: none.
	Functions *query.Registry
	// ScrubInterval is the pause between two background scrubs of every
	// local partition (stored entries and Raft log checked against their
	// CRC32Cs); 0: by profile, negative: no scrub.
	ScrubInterval time.Duration
	// ScrubBytesPerSec bounds the scrub's reading rate; 0: by profile.
	ScrubBytesPerSec int64
	// MinFreeDisk is the space kept free on the data directory's file
	// system: under it, the node refuses writes that grow its data
	// (grid.ErrDiskFull) until space returns, so that the Raft log, the
	// engine and raft's own term and vote records never meet a full disk.
	// 0: 2% of the file system, at least 64 MiB and at most 1 GiB;
	// negative: no reserve.
	MinFreeDisk int64
	// WatchHistory is how many log indexes of change history each partition
	// keeps for watches; 0: by profile (10000; 2000 with the small
	// profile). Every node of a cluster should use the same value.
	WatchHistory int
	// SweepInterval is how often a partition leader deletes expired keys
	// through Raft; 0: by profile (1 s; 5 s small; 200 ms test).
	SweepInterval time.Duration
	// TLSDir holds the node's certificates (ca.crt, node.crt, node.key;
	// see package gridtls and 'zerogrid cert'): every connection to and
	// from the node is then mutual TLS with the cluster CA. Required unless
	// Insecure.
	TLSDir string
	// Insecure runs the node without TLS or any authentication: anyone who
	// reaches its port can read, write and run code. For experiments on
	// loopback only.
	Insecure bool
	// MaxClientRequests and MaxClientStreams cap the unary calls and the
	// streams (scans, watches, jobs, backups) one client — one certificate,
	// or one address when insecure — may have running on this node at once;
	// more are refused with grid.ErrTooManyRequests. Other nodes are not
	// capped. 0: 1024 of each (a watch holds a stream per partition).
	MaxClientRequests int
	MaxClientStreams  int
	// MaxRequestMemory bounds the memory of the clients' requests a node
	// reads and handles at once: each call (other than a node's) is
	// admitted before its request is read only while the calls admitted,
	// each counted at the most the node reads for one request, stay
	// within it; others are refused with grid.ErrOverloaded. 0: an eighth
	// of the machine's memory, from 64 MiB to 1 GiB (32 MiB with the small
	// profile), and at least 8 requests' worth.
	MaxRequestMemory int64
	// OpsListen, if set, is the address of the ops listener: plain HTTP
	// with /metrics (Prometheus), /healthz and /readyz (ops.go). Off by
	// default; it carries no data, so bind it to loopback or a management
	// network.
	OpsListen string
	// OpsPprof also serves Go's profiler under /debug/pprof/ on the ops
	// listener.
	OpsPprof bool
	// TaskDelay delays every compute task on this node: a test knob that
	// makes a slow node for the hedging tests. Zero in production.
	TaskDelay time.Duration
	// RESPListen, if set, is the address of the node's Redis front door
	// (RESP2/RESP3, see resp.go): TLS with the cluster CA unless Insecure.
	RESPListen string
	// RESPMap is the map a Redis connection starts on (SELECT names
	// another); "" is "redis".
	RESPMap string
	// RESPMaxConns caps the Redis connections open at once; 0: 1024.
	RESPMaxConns int
}

// DefaultConfig returns a config with every default filled in; the caller
// sets ID, Listen, DataDir and Peers.
func DefaultConfig() Config {
	return Config{Partitions: 32, Replicas: 3, Profile: "default", Limits: grid.DefaultLimits()}
}

// Validate reports every problem at once.
func (c *Config) Validate() error {
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("%w: "+format, append([]any{grid.ErrBadConfig}, args...)...))
	}
	if c.ID == "" || strings.ContainsAny(c.ID, ",= \t") {
		bad("node id %q must be non-empty without ',', '=' or spaces", c.ID)
	}
	if c.Listener == nil {
		if _, _, err := net.SplitHostPort(c.Listen); err != nil {
			bad("listen address %q: %v", c.Listen, err)
		}
	}
	if c.OpsListen != "" {
		if _, _, err := net.SplitHostPort(c.OpsListen); err != nil {
			bad("ops listen address %q: %v", c.OpsListen, err)
		}
	}
	if c.OpsPprof && c.OpsListen == "" {
		bad("pprof needs the ops listener (--ops-listen)")
	}
	if c.DataDir == "" {
		bad("data dir is required")
	}
	switch {
	case len(c.Peers) == 0 && len(c.Join) == 0:
		bad("either peers (id=addr,... including this node, to found a cluster) or join addresses are required")
	case len(c.Peers) > 0 && len(c.Join) > 0:
		bad("peers found a new cluster and join enters a running one: give one of them, not both")
	case len(c.Peers) > 0:
		if _, ok := c.Peers[c.ID]; !ok {
			bad("peers do not include this node %q", c.ID)
		}
	}
	for _, addr := range c.Join {
		if _, _, err := net.SplitHostPort(addr); err != nil {
			bad("join address %q: %v", addr, err)
		}
	}
	if c.RESPListen != "" {
		if _, _, err := net.SplitHostPort(c.RESPListen); err != nil {
			bad("resp listen address %q: %v", c.RESPListen, err)
		}
	}
	if c.RESPMap != "" {
		if err := grid.ValidateMapName(c.RESPMap); err != nil {
			bad("resp map: %v", err)
		}
	}
	switch {
	case c.TLSDir == "" && !c.Insecure:
		bad("a TLS directory is required (the node's certificates: 'zerogrid cert ca' then 'zerogrid cert node'), or insecure mode for loopback experiments")
	case c.TLSDir != "" && c.Insecure:
		bad("a TLS directory and insecure mode exclude each other")
	}
	if len(c.Join) > 0 && c.JoinToken == "" {
		bad("joining needs the cluster's join token")
	}
	for k, v := range c.Labels {
		if k == "" || strings.ContainsAny(k+v, ",= \t") {
			bad("label %q=%q must be a non-empty key and a value without ',', '=' or spaces", k, v)
		}
	}
	if c.ReportInterval < 0 || c.DeadAfter < 0 {
		bad("report interval %v and dead-after %v must not be negative", c.ReportInterval, c.DeadAfter)
	} else if c.DeadAfter > 0 && c.DeadAfter < 3*c.reportInterval() {
		bad("dead-after %v must be at least three report intervals (%v)", c.DeadAfter, 3*c.reportInterval())
	}
	for id, addr := range c.Peers {
		if _, _, err := net.SplitHostPort(addr); err != nil {
			bad("peer %s address %q: %v", id, addr, err)
		}
	}
	if c.Partitions < 1 || c.Partitions > 4096 {
		bad("partitions %d must be in 1..4096", c.Partitions)
	}
	if c.Replicas < 1 || c.Replicas > 7 {
		bad("replicas %d must be in 1..7", c.Replicas)
	} else if len(c.Peers) > 0 && c.Replicas > len(c.Peers) {
		bad("replicas %d exceed the %d peers", c.Replicas, len(c.Peers))
	}
	switch c.Profile {
	case "default", "small", "test":
	default:
		bad("profile %q must be default, small or test", c.Profile)
	}
	switch c.Engine {
	case "", "badger", "bbolt":
	default:
		bad("engine %q must be badger or bbolt", c.Engine)
	}
	if c.ScrubBytesPerSec < 0 {
		bad("scrub rate %d bytes/s is negative", c.ScrubBytesPerSec)
	}
	if c.WatchHistory < 0 || c.WatchHistory > 1<<24 {
		bad("watch history %d must be in 0..%d", c.WatchHistory, 1<<24)
	}
	if c.SweepInterval < 0 {
		bad("sweep interval %v is negative", c.SweepInterval)
	}
	if c.TaskDelay < 0 {
		bad("task delay %v is negative", c.TaskDelay)
	}
	if err := c.Limits.Validate(); err != nil {
		errs = append(errs, err)
	} else if one := int64(newRequestLimits(c.Limits).server()); c.MaxRequestMemory < 0 || (c.MaxRequestMemory > 0 && c.MaxRequestMemory < one) {
		bad("request memory %d must hold at least one request (%d bytes with these limits)", c.MaxRequestMemory, one)
	}
	return errors.Join(errs...)
}

func (c *Config) timing() replication.RaftTiming {
	switch c.Profile {
	case "small":
		return replication.SmallTiming()
	case "test":
		return replication.TestTiming()
	}
	return replication.DefaultTiming()
}

// watchRetention bounds each partition's change log.
// requestMemory is the node's budget for requests in progress
// (MaxRequestMemory): by default an eighth of the machine's memory, from
// 64 MiB to 1 GiB (256 MiB where it is not known), 32 MiB with the small
// profile; at least 8 requests' worth.
func (c *Config) requestMemory() int64 {
	if c.MaxRequestMemory > 0 {
		return c.MaxRequestMemory
	}
	budget := int64(256 << 20)
	if total, _ := memInfo("/proc/meminfo"); total > 0 {
		budget = min(max(int64(total/8), 64<<20), 1<<30)
	}
	if c.Profile == "small" {
		budget = 32 << 20
	}
	return max(budget, 8*int64(newRequestLimits(c.Limits).server()))
}

func (c *Config) watchRetention() replication.WatchRetention {
	r := replication.DefaultWatchRetention()
	if c.Profile == "small" {
		r = replication.SmallWatchRetention()
	}
	if c.WatchHistory > 0 {
		r.Entries = uint64(c.WatchHistory)
	}
	return r
}

// sweepInterval is the expiry sweeper's period.
func (c *Config) sweepInterval() time.Duration {
	if c.SweepInterval > 0 {
		return c.SweepInterval
	}
	switch c.Profile {
	case "small":
		return 5 * time.Second
	case "test":
		return 200 * time.Millisecond
	}
	return time.Second
}

// reportInterval is the load-report period: 2 s by default, 5 s on a Pi
// Zero, 200 ms in tests.
func (c *Config) reportInterval() time.Duration {
	if c.ReportInterval > 0 {
		return c.ReportInterval
	}
	switch c.Profile {
	case "small":
		return 5 * time.Second
	case "test":
		return 200 * time.Millisecond
	}
	return 2 * time.Second
}

// groupSyncInterval is how often a node syncs its partitions with the
// table when the table has not changed (it does at once when it has): 10 s
// by default, 30 s on a Pi Zero, every report in tests.
func (c *Config) groupSyncInterval() time.Duration {
	switch c.Profile {
	case "small":
		return 30 * time.Second
	case "test":
		return 0
	}
	return 10 * time.Second
}

// scrubInterval is the pause between scrub passes: 6 h by default, a day
// on a Pi Zero, 1 s in tests.
func (c *Config) scrubInterval() time.Duration {
	if c.ScrubInterval != 0 {
		return c.ScrubInterval
	}
	switch c.Profile {
	case "small":
		return 24 * time.Hour
	case "test":
		return time.Second
	}
	return 6 * time.Hour
}

// scrubRate is the scrub's read rate in bytes per second: 4 MiB/s by
// default, 512 KiB/s on a Pi Zero (its SD card serves the grid first),
// 64 MiB/s in tests.
func (c *Config) scrubRate() int64 {
	if c.ScrubBytesPerSec > 0 {
		return c.ScrubBytesPerSec
	}
	switch c.Profile {
	case "small":
		return 512 << 10
	case "test":
		return 64 << 20
	}
	return 4 << 20
}

// deadAfter is the silence after which a node is declared dead: a minute
// by default (a reboot is not a death), 3 s in tests.
func (c *Config) deadAfter() time.Duration {
	if c.DeadAfter > 0 {
		return c.DeadAfter
	}
	if c.Profile == "test" {
		return 3 * time.Second
	}
	return time.Minute
}

// ParseLabels parses "zone=a,rack=3" into a map.
func ParseLabels(s string) (map[string]string, error) {
	out := map[string]string{}
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		k, v, ok := strings.Cut(part, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("%w: label %q must look like key=value", grid.ErrBadConfig, part)
		}
		out[k] = v
	}
	return out, nil
}

func (c *Config) logger() *slog.Logger {
	if c.Logger != nil {
		return c.Logger
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// nodes lists the peers as node records, sorted by id.
func (c *Config) nodes() []grid.Node {
	out := make([]grid.Node, 0, len(c.Peers))
	for id, addr := range c.Peers {
		out = append(out, grid.Node{ID: id, Addr: addr})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// ParsePeers parses "n1=127.0.0.1:7101,n2=..." into a map.
func ParsePeers(s string) (map[string]string, error) {
	out := map[string]string{}
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		id, addr, ok := strings.Cut(part, "=")
		if !ok || id == "" || addr == "" {
			return nil, fmt.Errorf("%w: peer %q must look like id=host:port", grid.ErrBadConfig, part)
		}
		if _, dup := out[id]; dup {
			return nil, fmt.Errorf("%w: peer id %q listed twice", grid.ErrBadConfig, id)
		}
		out[id] = addr
	}
	return out, nil
}

// policy is the placement policy of a cluster this node founds.
func (c *Config) policy() grid.Policy {
	p := grid.DefaultPolicy()
	p.Replicas = c.Replicas
	return p
}
