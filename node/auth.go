package node

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/zerogrid/zerogrid/grid"
	"github.com/zerogrid/zerogrid/grid/gridpb"
	"github.com/zerogrid/zerogrid/grid/gridtls"
)

// security is how a node's connections are protected: mutual TLS with
// certificates from the cluster CA, or nothing (Config.Insecure).
type security struct {
	tls *gridtls.Material // nil: insecure
}

func newSecurity(cfg Config) (*security, error) {
	if cfg.Insecure {
		return &security{}, nil
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
	return &security{tls: m}, nil
}

// serverCreds protects the node's listener.
func (s *security) serverCreds() credentials.TransportCredentials {
	if s.tls == nil {
		return insecure.NewCredentials()
	}
	return credentials.NewTLS(s.tls.ServerConfig())
}

// dialCreds protects the node's connections to other nodes.
func (s *security) dialCreds() credentials.TransportCredentials {
	if s.tls == nil {
		return insecure.NewCredentials()
	}
	return credentials.NewTLS(s.tls.ClientConfig())
}

// peerOnly lists the methods only another node may call: the Raft
// transport, load reports and joins.
func peerOnly(method string) bool {
	return strings.HasPrefix(method, raftMethods) ||
		method == gridpb.Cluster_Report_FullMethodName || method == gridpb.Cluster_Join_FullMethodName
}

// authorize checks a call's certificate against what the method needs
// (unary calls also have the request's claims checked): a caller without a
// certificate never gets this far under TLS; peer methods need a node
// certificate; a request marked as forwarded by a node must come from that
// node; a join or a load report must be made by the node it is about.
func (s *security) authorize(ctx context.Context, method string, req any) error {
	if s.tls == nil {
		return nil
	}
	who, ok := gridtls.FromContext(ctx)
	if !ok {
		return status.Error(codes.Unauthenticated, "zerogrid: a certificate from the cluster CA is required")
	}
	if peerOnly(method) && who.Kind != gridtls.KindNode {
		return status.Errorf(codes.PermissionDenied, "zerogrid: %s is for cluster nodes; %q holds a %s certificate", method, who.Name, who.Kind)
	}
	forwardedBy := ""
	if md, ok := metadata.FromIncomingContext(ctx); ok {
		if v := md.Get(forwardedKey); len(v) > 0 {
			forwardedBy = v[0]
		}
	}
	if forwardedBy != "" && !who.IsNode(forwardedBy) {
		return status.Errorf(codes.PermissionDenied, "zerogrid: request marked as forwarded by node %q comes from %s %q", forwardedBy, who.Kind, who.Name)
	}
	switch r := req.(type) {
	case *gridpb.ReportRequest:
		if forwardedBy == "" || forwardedBy == r.NodeId {
			if !who.IsNode(r.NodeId) {
				return status.Errorf(codes.PermissionDenied, "zerogrid: node %q may not report for node %q", who.Name, r.NodeId)
			}
		}
	case *gridpb.JoinRequest:
		if forwardedBy == "" {
			var rec struct {
				ID string `json:"id"`
			}
			if err := json.Unmarshal(r.RecordJson, &rec); err == nil && !who.IsNode(rec.ID) {
				return status.Errorf(codes.PermissionDenied, "zerogrid: the certificate of node %q cannot join as node %q", who.Name, rec.ID)
			}
		}
	}
	return nil
}

func (s *security) unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if err := s.authorize(ctx, info.FullMethod, req); err != nil {
		return nil, err
	}
	return handler(ctx, req)
}

func (s *security) stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	if err := s.authorize(ss.Context(), info.FullMethod, nil); err != nil {
		return err
	}
	return handler(srv, ss)
}
