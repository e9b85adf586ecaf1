package node

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/tidwall/redcon"
	"google.golang.org/grpc/peer"

	"github.com/zerogrid/zerogrid/grid"
	"github.com/zerogrid/zerogrid/grid/gridtls"
)

// The Redis front door (Config.RESPListen) speaks RESP2 and RESP3 to Redis
// clients and serves a subset of Redis's string commands over the node's
// maps: a connection works on one map (Config.RESPMap, "redis" by default;
// SELECT names another), keys are the Redis keys as they are, and a key's
// {hash tag} picks its partition as it does for every zerogrid client.
// Every command runs at the leader of its key's partition — here when this
// node leads it, else forwarded over the node's own connection to the
// leader — and reads are linearizable unless the connection asked for
// READONLY (stale reads from this node's replica, or another's).
//
// Under TLS the door serves TLS with the cluster CA: a client certificate
// names the caller and its roles, or the caller sends AUTH with a bearer
// token ('zerogrid cert token'); each command is authorized as the gRPC
// method it stands for (respMethods), by security.authorize, the one place
// calls are authorized. --insecure serves plain RESP to anyone.
//
// Replies are written with redcon's encoders; commands are read by
// respReader, which bounds what one command may bring before it is read
// (redcon's reader takes any bulk length and keeps its grown buffer).

// Bounds of what one Redis connection may send.
const (
	respMaxArgs       = 4096     // arguments of one command (MSET of 2047 pairs)
	respMaxInline     = 64 << 10 // an inline (telnet) command line
	respHardBulk      = 1 << 30  // a bulk longer than this is a protocol error: the connection closes
	respHoldOver      = 64 << 10 // a command's arguments beyond this many bytes are counted in the node's request budget
	respFlushAt       = 64 << 10 // replies are written out once this much is pending
	respWriteTimeout  = 30 * time.Second
	respHandshake     = 10 * time.Second
	respDefaultMap    = "redis"
	respDefaultMaxCon = 1024
)

// respServer is a node's Redis front door. start runs its accepting
// goroutine, which starts one per connection; close stops them all and
// waits for them.
type respServer struct {
	n       *Node
	lis     net.Listener
	log     *slog.Logger
	maxConn int
	cursors *scanCursors
	svc     *service
	leaders sync.Map // partition → the address that last answered as its leader

	ctx    context.Context // cancelled by close: ends every command in flight
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu    sync.Mutex
	conns map[net.Conn]struct{}
}

func newRESPServer(n *Node) (*respServer, error) {
	lis, err := net.Listen("tcp", n.cfg.RESPListen)
	if err != nil {
		return nil, fmt.Errorf("node: resp listen on %s: %w", n.cfg.RESPListen, err)
	}
	if n.sec.tls != nil {
		lis = tls.NewListener(lis, n.sec.tls.ServerConfig())
	} else {
		n.log.Warn("INSECURE: the Redis front door on " + lis.Addr().String() + " serves plain RESP without authentication: " +
			"anyone who can reach it can read and write every map")
	}
	maxConn := n.cfg.RESPMaxConns
	if maxConn <= 0 {
		maxConn = respDefaultMaxCon
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &respServer{n: n, lis: lis, log: n.log.With("resp", lis.Addr().String()), maxConn: maxConn,
		cursors: newScanCursors(), svc: &service{n: n}, ctx: ctx, cancel: cancel, conns: map[net.Conn]struct{}{}}, nil
}

// Addr is the address the front door listens on.
func (r *respServer) Addr() net.Addr { return r.lis.Addr() }

func (r *respServer) start() { r.spawn(r.accept) }

// spawn runs f on a goroutine that close waits for.
func (r *respServer) spawn(f func()) {
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		f()
	}()
}

func (r *respServer) accept() {
	acceptEach(r.ctx, r.lis, r.log, func(c net.Conn) {
		r.mu.Lock()
		if r.ctx.Err() != nil { // close has begun: it may have closed the others already
			r.mu.Unlock()
			c.Close()
			return
		}
		full := len(r.conns) >= r.maxConn
		if !full {
			r.conns[c] = struct{}{}
		}
		r.mu.Unlock()
		if full {
			// Plain text reaches a TLS client as garbage; it fails its
			// handshake either way.
			c.SetWriteDeadline(time.Now().Add(time.Second))
			c.Write(redcon.AppendError(nil, fmt.Sprintf("ERR max number of clients reached (%d)", r.maxConn)))
			c.Close()
			return
		}
		r.spawn(func() {
			defer r.forget(c)
			r.serve(c)
		})
	})
}

func (r *respServer) forget(c net.Conn) {
	c.Close()
	r.mu.Lock()
	delete(r.conns, c)
	r.mu.Unlock()
}

// close stops accepting, ends every command in flight, closes every
// connection and waits for their goroutines.
func (r *respServer) close() {
	r.cancel()
	r.lis.Close()
	r.mu.Lock()
	for c := range r.conns {
		c.Close()
	}
	r.mu.Unlock()
	r.wg.Wait()
}

// respConn is one client connection's state, owned by its goroutine.
type respConn struct {
	srv   *respServer
	c     net.Conn
	rd    *respReader
	out   []byte
	ctx   context.Context // carries the caller: peer address and, once known, identity
	authd bool            // a verified certificate or token (always, when insecure)
	proto int             // 2 or 3 (HELLO)
	mapN  string
	stale bool // READONLY: reads from any replica, as stale as it is

	clientID uint64 // with seq, makes every write's retries apply at most once
	seq      uint64
	quit     bool
}

func (r *respServer) serve(c net.Conn) {
	rc := &respConn{srv: r, c: c, proto: 2, mapN: r.n.cfg.RESPMap, clientID: rand.Uint64() | 1}
	if rc.mapN == "" {
		rc.mapN = respDefaultMap
	}
	p := &peer.Peer{Addr: c.RemoteAddr()}
	if tc, ok := c.(*tls.Conn); ok {
		hctx, cancel := context.WithTimeout(r.ctx, respHandshake)
		err := tc.HandshakeContext(hctx)
		cancel()
		if err != nil {
			r.log.Debug("resp TLS handshake refused", "from", c.RemoteAddr().String(), "err", err)
			return
		}
		p.AuthInfo = gridtls.NewConnInfo(tc.ConnectionState())
	}
	rc.ctx = peer.NewContext(r.ctx, p)
	if who, ok := gridtls.FromContext(rc.ctx); ok {
		rc.setIdentity(who)
	}
	if r.n.sec.tls == nil {
		rc.authd = true
	}
	rc.rd = newRESPReader(c, r.n.cfg.Limits, r.n.sec.limits.server(), r.n.sec.hold)
	for !rc.quit {
		args, err := rc.rd.next()
		var refused *respRefusal
		switch {
		case errors.As(err, &refused):
			rc.out = redcon.AppendError(rc.out, refused.Error())
		case err != nil:
			var perr respProtocolError
			if errors.As(err, &perr) {
				rc.out = redcon.AppendError(rc.out, "ERR Protocol error: "+string(perr))
				rc.flush()
			}
			return
		case len(args) > 0:
			rc.exec(args)
		}
		rc.rd.release()
		if rc.rd.buffered() == 0 || len(rc.out) >= respFlushAt {
			if rc.flush() != nil {
				return
			}
		}
	}
	rc.flush()
}

// setIdentity makes who the connection's caller: commands are authorized
// as who (security.authorize reads it from the context).
func (rc *respConn) setIdentity(who gridtls.Identity) {
	rc.authd = true
	rc.ctx = gridtls.WithTokenIdentity(rc.ctx, who)
}

func (rc *respConn) flush() error {
	if len(rc.out) == 0 {
		return nil
	}
	rc.c.SetWriteDeadline(time.Now().Add(respWriteTimeout))
	_, err := rc.c.Write(rc.out)
	if cap(rc.out) > 4*respFlushAt {
		rc.out = nil // a large reply's buffer is not kept
	} else {
		rc.out = rc.out[:0]
	}
	return err
}

// respProtocolError is input that is not RESP: the connection closes after
// saying so, as Redis does.
type respProtocolError string

func (e respProtocolError) Error() string { return "resp: protocol error: " + string(e) }

// respRefusal is a command refused as it was read (too large, or over the
// node's request budget): its bytes were read and dropped, nothing was done,
// and the connection goes on.
type respRefusal struct{ err error }

func (e *respRefusal) Error() string { return respErrorText(e.err) }

// respReader reads one command at a time and holds each to the node's
// limits before its bytes are in memory: a bulk longer than a value (or a
// key) or a command larger than the largest gRPC request is read and
// dropped, not kept; a multi-bulk count over respMaxArgs, a bulk over
// respHardBulk or an inline line over respMaxInline is a protocol error.
// What a command brings beyond its first respHoldOver bytes is counted in
// the node's request budget (hold) until release, so the connections
// together hold at most that budget plus respHoldOver each.
type respReader struct {
	br       *bufio.Reader
	maxBulk  int // the largest key or value
	maxTotal int // the largest command, all arguments together
	holdOver int // a command's arguments beyond this many bytes are held in the budget
	hold     func(int64) (func(), error)
	releases []func()
}

func newRESPReader(r io.Reader, l grid.Limits, maxTotal int, hold func(int64) (func(), error)) *respReader {
	return &respReader{br: bufio.NewReaderSize(r, 4096), maxBulk: max(l.MaxValueBytes, l.MaxKeyBytes), maxTotal: maxTotal, holdOver: respHoldOver, hold: hold}
}

func (rd *respReader) buffered() int { return rd.br.Buffered() }

// release gives back the budget the last command held.
func (rd *respReader) release() {
	for _, f := range rd.releases {
		f()
	}
	rd.releases = rd.releases[:0]
}

// line reads a line ending in CRLF (or LF, for inline commands) of at most
// limit bytes, without its end.
func (rd *respReader) line(limit int) ([]byte, error) {
	var buf []byte
	for {
		part, err := rd.br.ReadSlice('\n')
		if len(buf)+len(part) > limit+2 {
			return nil, respProtocolError("line too long")
		}
		buf = append(buf, part...)
		if err == nil {
			break
		}
		if !errors.Is(err, bufio.ErrBufferFull) {
			return nil, err
		}
	}
	buf = buf[:len(buf)-1]
	if n := len(buf); n > 0 && buf[n-1] == '\r' {
		buf = buf[:n-1]
	}
	return buf, nil
}

// next reads the next command's arguments (none for an empty line).
func (rd *respReader) next() ([][]byte, error) {
	b, err := rd.br.Peek(1)
	if err != nil {
		return nil, err
	}
	if b[0] != '*' {
		ln, err := rd.line(respMaxInline)
		if err != nil {
			return nil, err
		}
		if len(ln) == 0 {
			return nil, nil
		}
		cmd, err := redcon.Parse(append(ln, '\r', '\n'))
		if err != nil {
			return nil, respProtocolError(err.Error())
		}
		return cmd.Args, nil
	}
	hdr, err := rd.line(32)
	if err != nil {
		return nil, err
	}
	count, err := strconv.Atoi(string(hdr[1:]))
	if err != nil || count > respMaxArgs {
		return nil, respProtocolError("invalid multibulk length")
	}
	if count <= 0 {
		return nil, nil
	}
	args := make([][]byte, 0, min(count, 64))
	total := 0
	var refusal error
	for range count {
		h, err := rd.line(32)
		if err != nil {
			return nil, err
		}
		if len(h) == 0 || h[0] != '$' {
			return nil, respProtocolError("expected '$'")
		}
		size, err := strconv.Atoi(string(h[1:]))
		if err != nil || size < 0 || size > respHardBulk {
			return nil, respProtocolError("invalid bulk length")
		}
		total += size
		switch {
		case refusal != nil:
		case size > rd.maxBulk:
			refusal = fmt.Errorf("%w: an argument of %d bytes; this node takes values of at most %d bytes (nothing was done)",
				grid.ErrValueTooLarge, size, rd.maxBulk)
		case total > rd.maxTotal:
			refusal = fmt.Errorf("%w: a command of more than %d bytes; this node takes at most %d (nothing was done)", grid.ErrRequestTooLarge, total, rd.maxTotal)
		case total > rd.holdOver: // a command's first bytes are free; the rest are counted
			release, err := rd.hold(int64(size))
			if err != nil {
				refusal = fmt.Errorf("%w (nothing was done)", err)
				break
			}
			rd.releases = append(rd.releases, release)
		}
		if refusal != nil {
			if _, err := rd.br.Discard(size + 2); err != nil {
				return nil, err
			}
			continue
		}
		arg := make([]byte, size+2)
		if _, err := io.ReadFull(rd.br, arg); err != nil {
			return nil, err
		}
		if arg[size] != '\r' || arg[size+1] != '\n' {
			return nil, respProtocolError("bulk not ended by CRLF")
		}
		args = append(args, arg[:size])
	}
	if refusal != nil {
		return nil, &respRefusal{refusal}
	}
	return args, nil
}
