package node

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/tap"

	"github.com/zerogrid/zerogrid/grid"
	"github.com/zerogrid/zerogrid/grid/gridpb"
	"github.com/zerogrid/zerogrid/grid/gridtls"
)

// security is how a node's connections are protected: mutual TLS with
// certificates from the cluster CA, or nothing (Config.Insecure).
type security struct {
	tls    *gridtls.Material // nil: insecure
	audit  *audit            // set once the data dir exists
	log    *slog.Logger
	limits requestLimits

	maxCalls, maxStreams int
	budget               int64 // bytes of requests admitted at once (Config.MaxRequestMemory)
	mu                   sync.Mutex
	running              map[string]int // per caller key: calls and streams running ("s:" prefix for streams)
	reserved             int64          // bytes of the budget held by calls admitted
}

func newSecurity(cfg Config) (*security, error) {
	calls, streams := cfg.MaxClientRequests, cfg.MaxClientStreams
	if calls <= 0 {
		calls = 1024
	}
	if streams <= 0 {
		streams = 1024
	}
	s := &security{maxCalls: calls, maxStreams: streams, running: map[string]int{}, limits: newRequestLimits(cfg.Limits), budget: cfg.requestMemory()}
	if cfg.Insecure {
		return s, nil
	}
	m, err := gridtls.LoadNode(cfg.TLSDir)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", grid.ErrBadConfig, err)
	}
	self, err := m.Self()
	if err != nil {
		return nil, fmt.Errorf("%w: %v", grid.ErrBadConfig, err)
	}
	if !self.IsNode(cfg.ID) {
		return nil, fmt.Errorf("%w: the certificate in %s is for %s %q, not for node %q: issue one with 'zerogrid cert node --id %s'",
			grid.ErrBadConfig, cfg.TLSDir, self.Kind, self.Name, cfg.ID, cfg.ID)
	}
	s.tls = m
	return s, nil
}

// dialCreds protects the node's connections to other nodes; the Raft
// transport's ask for ALPN gridtls.ALPNRaft (see listen.go).
func (s *security) dialCreds(alpn ...string) credentials.TransportCredentials {
	if s.tls == nil {
		return insecure.NewCredentials()
	}
	cfg := s.tls.ClientConfig()
	cfg.NextProtos = alpn // gRPC adds h2
	return credentials.NewTLS(cfg)
}

// The roles a call may need. A node certificate holds all of them; a
// client certificate holds those written into it, admin counting as read,
// write and compute too.
const (
	roleAny     = "any" // every certificate from the cluster CA: routing tables, map names
	roleRead    = "read"
	roleWrite   = "write"
	roleCompute = "compute" // ship code to the nodes: jobs, entry processors
	roleAdmin   = "admin"   // maps, membership, drains, backups and restores, checks, recovery
	rolePeer    = "peer"    // the nodes' own calls: Raft, reports, joins, internal RPCs
)

// roleFor is the role method needs; "" for a method no role grants (a
// method added without deciding who may call it is refused to all).
func roleFor(method string) string {
	if strings.HasPrefix(method, raftMethods) {
		return rolePeer
	}
	switch method {
	case gridpb.Admin_GetTable_FullMethodName, gridpb.Admin_ListMaps_FullMethodName:
		return roleAny
	case gridpb.KV_Get_FullMethodName, gridpb.KV_Scan_FullMethodName, gridpb.Watch_Watch_FullMethodName,
		gridpb.Admin_Status_FullMethodName, gridpb.Cluster_Nodes_FullMethodName:
		return roleRead
	case gridpb.KV_Put_FullMethodName, gridpb.KV_Delete_FullMethodName, gridpb.KV_CompareAndSwap_FullMethodName,
		gridpb.KV_Txn_FullMethodName, gridpb.Lock_Acquire_FullMethodName, gridpb.Lock_Renew_FullMethodName,
		gridpb.Lock_Release_FullMethodName:
		return roleWrite
	case gridpb.Compute_Submit_FullMethodName, gridpb.Compute_Explain_FullMethodName, gridpb.Compute_Apply_FullMethodName:
		return roleCompute
	case gridpb.Admin_CreateMap_FullMethodName, gridpb.Cluster_NodeOp_FullMethodName, gridpb.Cluster_Recover_FullMethodName,
		gridpb.Backup_ReadPartition_FullMethodName, gridpb.Backup_Restore_FullMethodName, gridpb.Integrity_Check_FullMethodName,
		gridpb.Admin_Audit_FullMethodName:
		return roleAdmin
	case gridpb.Cluster_Report_FullMethodName, gridpb.Cluster_Join_FullMethodName, gridpb.Cluster_Membership_FullMethodName,
		gridpb.Compute_RunTask_FullMethodName, gridpb.Integrity_Mark_FullMethodName, gridpb.Integrity_Digest_FullMethodName,
		gridpb.Integrity_Quarantine_FullMethodName, gridpb.Integrity_Replica_FullMethodName,
		gridpb.Integrity_RecoverReplica_FullMethodName:
		return rolePeer
	}
	return ""
}

// grants reports whether who may call a method needing role.
func grants(who gridtls.Identity, role string) bool {
	switch {
	case role == "":
		return false
	case who.Kind == gridtls.KindNode:
		return true
	case (who.Kind != gridtls.KindClient && who.Kind != gridtls.KindToken) || role == rolePeer:
		return false
	case role == roleAny:
		return true
	}
	return who.HasRole(roleAdmin) || who.HasRole(role)
}

// authorize checks a call's certificate against the role its method needs
// (roleFor; unary calls also have the request's claims checked): a caller
// without a certificate never gets this far under TLS; peer methods need a
// node certificate; a request marked as forwarded by a node must come from
// that node; a join or a load report must be made by the node it is about.
// It is the one place where calls are authorized.
func (s *security) authorize(ctx context.Context, method string, req any) error {
	if s.tls == nil {
		return nil
	}
	who, ok := gridtls.FromContext(ctx)
	if !ok {
		return denied(grid.ErrUnauthenticated, "a certificate from the cluster CA is required")
	}
	if err := s.refuseRevoked(who); err != nil {
		return err
	}
	if role := roleFor(method); !grants(who, role) {
		switch role {
		case "":
			return denied(grid.ErrPermissionDenied, "no role grants %s", method)
		case rolePeer:
			return denied(grid.ErrPermissionDenied, "%s is for cluster nodes; %q holds a %s certificate", method, who.Name, who.Kind)
		}
		return denied(grid.ErrPermissionDenied, "%s needs the %s role; %s %q holds %v", method, role, who.Kind, who.Name, who.Roles)
	}
	forwardedBy := ""
	if md, ok := metadata.FromIncomingContext(ctx); ok {
		if v := md.Get(forwardedKey); len(v) > 0 {
			forwardedBy = v[0]
		}
	}
	if forwardedBy != "" && !who.IsNode(forwardedBy) {
		return denied(grid.ErrPermissionDenied, "request marked as forwarded by node %q comes from %s %q", forwardedBy, who.Kind, who.Name)
	}
	switch r := req.(type) {
	case *gridpb.ReportRequest:
		if forwardedBy == "" || forwardedBy == r.NodeId {
			if !who.IsNode(r.NodeId) {
				return denied(grid.ErrPermissionDenied, "node %q may not report for node %q", who.Name, r.NodeId)
			}
		}
	case *gridpb.JoinRequest:
		if forwardedBy == "" {
			var rec struct {
				ID string `json:"id"`
			}
			if err := json.Unmarshal(r.RecordJson, &rec); err == nil && !who.IsNode(rec.ID) {
				return denied(grid.ErrPermissionDenied, "the certificate of node %q cannot join as node %q", who.Name, rec.ID)
			}
		}
	}
	return nil
}

// denied is an authorization failure as the gRPC status clients map back
// to err.
func denied(err error, format string, args ...any) error {
	return gridpb.ToStatus(fmt.Errorf("%w: "+format, append([]any{err}, args...)...))
}

// tap runs before a call's request is read: under TLS a caller must have
// shown a certificate from the cluster CA or bring a bearer token signed by
// it ("authorization: Bearer ..."), whose identity it records for
// authorize. Anyone else is refused before their message is decoded. Then
// the call must fit the node's request budget (reserve).
func (s *security) tap(ctx context.Context, info *tap.Info) (context.Context, error) {
	ctx, err := s.authenticate(ctx, info)
	if err != nil {
		return nil, err
	}
	return s.reserve(ctx, info.FullMethodName)
}

func (s *security) authenticate(ctx context.Context, info *tap.Info) (context.Context, error) {
	if s.tls == nil {
		return ctx, nil
	}
	if _, ok := gridtls.FromContext(ctx); ok {
		return ctx, nil
	}
	v := info.Header.Get("authorization")
	if len(v) == 0 {
		return nil, status.Error(codes.Unauthenticated, "zerogrid: a certificate or a bearer token from the cluster CA is required")
	}
	who, err := s.tls.VerifyBearer(v[0])
	if err != nil {
		return nil, status.Errorf(codes.Unauthenticated, "zerogrid: %v", err)
	}
	return gridtls.WithTokenIdentity(ctx, who), nil
}

// reservedKey marks a call's release of its share of the request budget
// in its context.
type reservedKey struct{}

// reserve admits a call into the node's budget for requests in progress
// before its request is read, or refuses it (ResourceExhausted,
// grid.ErrOverloaded). A call counts the most the server reads for one
// request (requestLimits.server), whatever its method: a request over its
// method's own limit is refused only once it is read. The share is
// released when the call ends, or for a server stream once its request is
// in (openStream). Calls from nodes are not counted (Raft has a server of
// its own under TLS; insecure, its methods are spared by name).
func (s *security) reserve(ctx context.Context, method string) (context.Context, error) {
	if who, ok := gridtls.FromContext(ctx); (ok && who.Kind == gridtls.KindNode) || (s.tls == nil && roleFor(method) == rolePeer) {
		return ctx, nil
	}
	release, err := s.hold(int64(s.limits.server()))
	if err != nil {
		return nil, gridpb.ToStatus(err)
	}
	context.AfterFunc(ctx, release) // gRPC cancels a call's context when it ends, however it ends
	return context.WithValue(ctx, reservedKey{}, release), nil
}

// hold takes charge bytes of the node's budget for requests in progress
// (grid.ErrOverloaded if they do not fit) and returns the function, safe to
// call more than once, that gives them back. gRPC calls take their share in
// reserve; the Redis front door as a command's large arguments arrive.
func (s *security) hold(charge int64) (func(), error) {
	s.mu.Lock()
	if held := s.reserved; held+charge > s.budget {
		s.mu.Unlock()
		return nil, fmt.Errorf("%w: requests worth %d bytes are being read or handled here, and one more may bring %d (the node's budget is %d); try again shortly",
			grid.ErrOverloaded, held, charge, s.budget)
	}
	s.reserved += charge
	s.mu.Unlock()
	return sync.OnceFunc(func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		s.reserved -= charge
	}), nil
}

// raftTap admits to the Raft server (connections that asked for ALPN
// gridtls.ALPNRaft) unrevoked node certificates only, before a message of
// up to replication.MaxRaftMessageBytes is read.
func (s *security) raftTap(ctx context.Context, _ *tap.Info) (context.Context, error) {
	who, ok := gridtls.FromContext(ctx)
	switch {
	case !ok:
		return nil, status.Error(codes.Unauthenticated, "zerogrid: Raft connections need a node certificate from the cluster CA")
	case who.Kind != gridtls.KindNode:
		return nil, status.Errorf(codes.PermissionDenied, "zerogrid: Raft connections are for cluster nodes; %q holds a %s certificate", who.Name, who.Kind)
	}
	if err := s.refuseRevoked(who); err != nil {
		return nil, err
	}
	return ctx, nil
}

// notServedHere answers, once authorized, a call to a method the server it
// reached does not serve: Raft asked on a connection that did not ask for
// it (ALPN), or a method no service has.
func notServedHere(_ any, ss grpc.ServerStream) error {
	method, _ := grpc.MethodFromServerStream(ss)
	if strings.HasPrefix(method, raftMethods) {
		return status.Errorf(codes.Unimplemented, "zerogrid: %s is served on connections that ask for ALPN protocol %q (nodes' Raft connections)", method, gridtls.ALPNRaft)
	}
	return status.Errorf(codes.Unimplemented, "zerogrid: no method %s", method)
}

// authorizeSender is the Raft transport's AuthorizeSender, asked for every
// Raft message: under TLS a Raft message may name only the node whose
// certificate sent it, and that certificate must not have been revoked
// since its connection was made.
func (s *security) authorizeSender(ctx context.Context, id string) error {
	if s.tls == nil {
		return nil
	}
	who, ok := gridtls.FromContext(ctx)
	if !ok || !who.IsNode(id) {
		return fmt.Errorf("%w: sent with %s %q's certificate", grid.ErrPermissionDenied, who.Kind, who.Name)
	}
	return s.refuseRevoked(who)
}

// refuseRevoked refuses a caller whose certificate or token was revoked
// after its connection was made (a handshake refuses those revoked
// before). It is asked on every call and every stream message, so it is
// a map lookup (gridtls.Material.Revoked).
func (s *security) refuseRevoked(who gridtls.Identity) error {
	if s.tls == nil || !s.tls.Revoked(who) {
		return nil
	}
	return denied(grid.ErrUnauthenticated, "the %s of %q (%s) is revoked", credentialOf(who), who.Name, who.Serial)
}

func credentialOf(who gridtls.Identity) string {
	if who.Kind == gridtls.KindToken {
		return "token"
	}
	return "certificate"
}

// openStream is a stream as the interceptor hands it to its handler: it
// keeps the first request, for the audit record, refuses a message larger
// than the method takes (ResourceExhausted), and ends the stream
// (Unauthenticated) at the first message received or sent after the
// caller's certificate or token is revoked — a watch or a Raft pipeline
// opened before lives as long as its connection. gRPC lets one goroutine
// receive while another sends: refused is guarded.
type openStream struct {
	grpc.ServerStream
	sec          *security
	method       string
	clientStream bool
	who          gridtls.Identity
	first        any // set by RecvMsg, read once the handler returned

	mu      sync.Mutex
	refused error
}

func (o *openStream) RecvMsg(m any) error {
	if err := o.ServerStream.RecvMsg(m); err != nil {
		return err
	}
	if err := o.check(); err != nil {
		return err
	}
	if err := o.sec.limits.check(o.method, m); err != nil {
		return o.refuse(gridpb.ToStatus(err))
	}
	if o.first == nil {
		o.first = m
		if release, ok := o.Context().Value(reservedKey{}).(func()); ok && !o.clientStream {
			release() // the one request of a server stream is in
		}
	}
	return nil
}

func (o *openStream) SendMsg(m any) error {
	if err := o.check(); err != nil {
		return err
	}
	return o.ServerStream.SendMsg(m)
}

// check refuses the stream's messages once its caller is revoked.
func (o *openStream) check() error {
	return o.refuse(o.sec.refuseRevoked(o.who))
}

// refuse records err (if not nil) as why the stream ends and returns the
// first such reason.
func (o *openStream) refuse(err error) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.refused == nil {
		o.refused = err
	}
	return o.refused
}

// admit counts a call (or a stream) against its caller's cap and returns
// the function that releases it; other nodes, and the nodes' own methods
// (Raft streams above all: one per group and peer), are not capped.
func (s *security) admit(ctx context.Context, method string, stream bool) (func(), error) {
	if roleFor(method) == rolePeer {
		return func() {}, nil
	}
	key := ""
	if who, ok := gridtls.FromContext(ctx); ok {
		if who.Kind == gridtls.KindNode {
			return func() {}, nil
		}
		key = "client:" + who.Name
	} else if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		key = p.Addr.String()
		if host, _, err := net.SplitHostPort(key); err == nil {
			key = host
		}
	}
	limit, what := s.maxCalls, "calls"
	if stream {
		key, limit, what = "s:"+key, s.maxStreams, "streams"
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.running[key] >= limit {
		return nil, gridpb.ToStatus(fmt.Errorf("%w: %s already has %d %s running on this node (the most it may)", grid.ErrTooManyRequests, strings.TrimPrefix(key, "s:"), limit, what))
	}
	s.running[key]++
	return func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.running[key]--; s.running[key] <= 0 {
			delete(s.running, key)
		}
	}, nil
}

func (s *security) unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	start := time.Now()
	if err := s.authorize(ctx, info.FullMethod, req); err != nil {
		s.auditCall(ctx, info.FullMethod, req, start, err, true)
		return nil, err
	}
	if err := s.limits.check(info.FullMethod, req); err != nil {
		err = gridpb.ToStatus(err)
		s.auditCall(ctx, info.FullMethod, nil, start, err, true)
		return nil, err
	}
	release, err := s.admit(ctx, info.FullMethod, false)
	if err != nil {
		return nil, err
	}
	defer release()
	resp, err := handler(ctx, req)
	// The one place where a handler's error becomes a gRPC status (with
	// the grid sentinel's reason, see gridpb.ToStatus).
	err = gridpb.ToStatus(err)
	s.auditCall(ctx, info.FullMethod, req, start, err, false)
	return resp, err
}

func (s *security) stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	start := time.Now()
	if err := s.authorize(ss.Context(), info.FullMethod, nil); err != nil {
		s.auditCall(ss.Context(), info.FullMethod, nil, start, err, true)
		return err
	}
	release, err := s.admit(ss.Context(), info.FullMethod, true)
	if err != nil {
		return err
	}
	defer release()
	st := &openStream{ServerStream: ss, sec: s, method: info.FullMethod, clientStream: info.IsClientStream}
	st.who, _ = gridtls.FromContext(ss.Context())
	err = gridpb.ToStatus(handler(srv, st))
	refused := st.refuse(nil)
	if refused != nil {
		err = refused // whatever the handler made of it
	}
	s.auditCall(ss.Context(), info.FullMethod, st.first, start, err, refused != nil)
	return err
}
