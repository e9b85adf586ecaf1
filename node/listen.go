package node

import (
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"sync"
	"time"

	"google.golang.org/grpc/credentials"

	"github.com/zerogrid/zerogrid/grid/gridtls"
)

// gRPC has one receive limit per server, checked when a message's length
// arrives, before the message is read into memory; a check in an
// interceptor or a codec comes after it was. Raft needs 72 MiB
// (replication.MaxRaftMessageBytes) and a client request a few MiB at most,
// so under TLS a node serves two gRPC servers on its one port: connections
// that ask for ALPN gridtls.ALPNRaft (the Raft transport's) go to the Raft
// server, whose tap lets in node certificates only, and every other
// connection to the server of all other services, whose limit is the
// largest request any of them takes (requestLimits). The split needs the
// TLS handshake done before gRPC sees the connection: splitListener does it.

// splitHandshakeTimeout bounds a connection's TLS handshake.
const splitHandshakeTimeout = 10 * time.Second

// splitListener accepts a node's connections, completes their TLS
// handshakes and hands each to the listener of the gRPC server its ALPN
// protocol asks for. start runs its accepting goroutine, which starts one
// per handshake; close stops them all and waits for them.
type splitListener struct {
	lis         net.Listener
	cfg         *tls.Config
	log         *slog.Logger
	raft, other *connQueue

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup // the accepting goroutine and the handshakes in progress
}

func newSplitListener(lis net.Listener, cfg *tls.Config, log *slog.Logger) *splitListener {
	cfg = cfg.Clone()
	cfg.NextProtos = []string{gridtls.ALPNRaft, "h2"} // the server's preference decides
	ctx, cancel := context.WithCancel(context.Background())
	return &splitListener{lis: lis, cfg: cfg, log: log, ctx: ctx, cancel: cancel,
		raft: newConnQueue(lis.Addr()), other: newConnQueue(lis.Addr())}
}

// start accepts connections until close.
func (s *splitListener) start() {
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		s.run()
	}()
}

func (s *splitListener) run() {
	acceptEach(s.ctx, s.lis, s.log, func(raw net.Conn) {
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.handshake(raw)
		}()
	})
}

// acceptEach hands each connection lis accepts to handle, until lis is
// closed or ctx ends; a transient error (too many open files) is logged
// and waited out rather than spun on.
func acceptEach(ctx context.Context, lis net.Listener, log *slog.Logger, handle func(net.Conn)) {
	for {
		c, err := lis.Accept()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			log.Warn("accept", "addr", lis.Addr().String(), "err", err)
			select {
			case <-ctx.Done():
				return
			case <-time.After(50 * time.Millisecond):
			}
			continue
		}
		handle(c)
	}
}

func (s *splitListener) handshake(raw net.Conn) {
	ctx, cancel := context.WithTimeout(s.ctx, splitHandshakeTimeout)
	defer cancel()
	conn := tls.Server(raw, s.cfg)
	if err := conn.HandshakeContext(ctx); err != nil {
		s.log.Debug("TLS handshake refused", "from", raw.RemoteAddr().String(), "err", err)
		raw.Close()
		return
	}
	q := s.other
	if conn.ConnectionState().NegotiatedProtocol == gridtls.ALPNRaft {
		q = s.raft
	}
	select {
	case q.conns <- conn:
	case <-q.closed:
		conn.Close()
	case <-s.ctx.Done():
		conn.Close()
	}
}

// close stops accepting, closes both servers' listeners and waits for the
// accepting goroutine and the handshakes in progress.
func (s *splitListener) close() {
	s.cancel()
	s.lis.Close()
	s.raft.Close()
	s.other.Close()
	s.wg.Wait()
}

// connQueue is the net.Listener a gRPC server serves: the connections
// splitListener routed to it.
type connQueue struct {
	addr   net.Addr
	conns  chan net.Conn
	once   sync.Once
	closed chan struct{}
}

func newConnQueue(addr net.Addr) *connQueue {
	return &connQueue{addr: addr, conns: make(chan net.Conn), closed: make(chan struct{})}
}

func (q *connQueue) Accept() (net.Conn, error) {
	select {
	case c := <-q.conns:
		return c, nil
	case <-q.closed:
		return nil, net.ErrClosed
	}
}

func (q *connQueue) Close() error {
	q.once.Do(func() { close(q.closed) })
	return nil
}

func (q *connQueue) Addr() net.Addr { return q.addr }

// handshaken is the transport credentials of a gRPC server whose
// connections come from splitListener, their TLS handshake done: it only
// reports what the handshake established (the peer's verified
// certificate, which authorization reads).
type handshaken struct{}

var _ credentials.TransportCredentials = handshaken{}

func (handshaken) ServerHandshake(c net.Conn) (net.Conn, credentials.AuthInfo, error) {
	tc, ok := c.(*tls.Conn)
	if !ok {
		return nil, nil, errors.New("node: a connection that did not come through the TLS listener")
	}
	return tc, gridtls.NewConnInfo(tc.ConnectionState()), nil
}

func (handshaken) ClientHandshake(context.Context, string, net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return nil, nil, errors.New("node: handshaken credentials serve only")
}

func (handshaken) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: "tls"}
}

func (h handshaken) Clone() credentials.TransportCredentials { return h }

func (handshaken) OverrideServerName(string) error { return nil }
