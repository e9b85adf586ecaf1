package main

import (
	"context"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// wire dials the client's TCP connections and counts the bytes that cross
// them: what the client sends to and receives from the nodes, gRPC and
// HTTP/2 framing included, TCP/IP headers not. With a delay, every byte
// is held back that long in each direction, as on a link with that one-way
// latency (the link still carries several messages at once).
type wire struct {
	delay      time.Duration
	sent, recv atomic.Int64
}

// wireCount is a reading of a wire's counters.
type wireCount struct{ Sent, Recv int64 }

func (c wireCount) Total() int64 { return c.Sent + c.Recv }

func (w *wire) count() wireCount { return wireCount{w.sent.Load(), w.recv.Load()} }

func (a wireCount) minus(b wireCount) wireCount { return wireCount{a.Sent - b.Sent, a.Recv - b.Recv} }

// dial is a grpc.WithContextDialer function.
func (w *wire) dial(ctx context.Context, addr string) (net.Conn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	if w.delay <= 0 {
		return &countedConn{Conn: c, w: w}, nil
	}
	return newDelayedConn(c, w), nil
}

// countedConn counts what it reads and writes.
type countedConn struct {
	net.Conn
	w *wire
}

func (c *countedConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	c.w.recv.Add(int64(n))
	return n, err
}

func (c *countedConn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	c.w.sent.Add(int64(n))
	return n, err
}

// chunk is data in transit on a delayed connection, due at a time.
type chunk struct {
	data []byte
	due  time.Time
}

// delayedConn is a delay line in each direction. Write queues the bytes
// and returns; a sender goroutine writes them to the socket once they are
// due. A receiver goroutine reads the socket and queues what arrives; Read
// hands it out once due. Close stops both goroutines and waits for them.
type delayedConn struct {
	net.Conn
	w *wire

	out    chan chunk
	in     chan chunk
	ctx    context.Context // cancelled by Close
	cancel context.CancelFunc
	wg     sync.WaitGroup

	closeOnce sync.Once
	sendErr   atomic.Pointer[error] // the sender's first write error
	recvErr   error                 // the receiver's read error; read after in is closed
	pending   []byte                // the rest of a chunk Read has started; Read's alone
}

// delayQueue bounds the chunks in transit per direction; a full queue
// blocks the writer (or the socket reader), as a full socket buffer would.
const delayQueue = 4096

func newDelayedConn(c net.Conn, w *wire) *delayedConn {
	d := &delayedConn{Conn: c, w: w, out: make(chan chunk, delayQueue), in: make(chan chunk, delayQueue)}
	d.ctx, d.cancel = context.WithCancel(context.Background())
	d.wg.Add(2)
	go d.sender()
	go d.receiver()
	return d
}

func (d *delayedConn) sender() {
	defer d.wg.Done()
	for {
		select {
		case <-d.ctx.Done():
			return
		case c := <-d.out:
			if sleepUntil(d.ctx, c.due); d.ctx.Err() != nil {
				return
			}
			n, err := d.Conn.Write(c.data)
			d.w.sent.Add(int64(n))
			if err != nil {
				d.sendErr.CompareAndSwap(nil, &err)
				_ = d.Conn.Close() // the reader sees it too
				return
			}
		}
	}
}

func (d *delayedConn) receiver() {
	defer d.wg.Done()
	defer close(d.in)
	for {
		buf := make([]byte, 32<<10)
		n, err := d.Conn.Read(buf)
		if n > 0 {
			d.w.recv.Add(int64(n))
			select {
			case d.in <- chunk{data: buf[:n], due: time.Now().Add(d.w.delay)}:
			case <-d.ctx.Done():
				return
			}
		}
		if err != nil {
			d.recvErr = err
			return
		}
	}
}

func (d *delayedConn) Write(b []byte) (int, error) {
	if p := d.sendErr.Load(); p != nil {
		return 0, *p
	}
	c := chunk{data: append([]byte(nil), b...), due: time.Now().Add(d.w.delay)}
	select {
	case d.out <- c:
		return len(b), nil
	case <-d.ctx.Done():
		return 0, net.ErrClosed
	}
}

func (d *delayedConn) Read(b []byte) (int, error) {
	if len(d.pending) == 0 {
		c, ok := <-d.in
		if !ok {
			if d.recvErr == nil {
				return 0, net.ErrClosed
			}
			return 0, d.recvErr
		}
		if sleepUntil(d.ctx, c.due); d.ctx.Err() != nil {
			return 0, net.ErrClosed
		}
		d.pending = c.data
	}
	n := copy(b, d.pending)
	d.pending = d.pending[n:]
	return n, nil
}

func (d *delayedConn) Close() error {
	err := net.ErrClosed
	d.closeOnce.Do(func() {
		d.cancel()
		err = d.Conn.Close()
		d.wg.Wait()
	})
	if errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}
