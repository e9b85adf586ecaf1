package client

import (
	"context"
	"fmt"
	"hash/crc32"
	"io"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/zerogrid/zerogrid/grid"
	"github.com/zerogrid/zerogrid/grid/gridpb"
)

// Map is a handle on one named map of the cluster. It is cheap to make and
// safe for concurrent use.
type Map struct {
	c    *Client
	name string
}

// Entry is one key's value as a node served it.
type Entry struct {
	Key     []byte
	Value   []byte
	Version uint64 // the Raft index of the write that set the value
	// Partition holds the key.
	Partition int
	// AppliedIndex is how far the serving replica had applied its
	// partition's log; for a stale read it bounds how stale the value is.
	AppliedIndex uint64
	// ServedBy is the id of the node that answered.
	ServedBy string
	// Expiry is when the key expires (zero: never), as fixed by the
	// leader that wrote it.
	Expiry time.Time
}

// ReadOption changes how a read is served.
type ReadOption func(*readOptions)

type readOptions struct{ stale bool }

// Stale lets any replica of the partition serve the read from its local
// state, without asking the leader. It is cheaper and keeps working while the
// partition has no leader, but may miss recent writes; Entry.AppliedIndex
// says how far the replica had got.
func Stale() ReadOption { return func(o *readOptions) { o.stale = true } }

// Name returns the map's name.
func (m *Map) Name() string { return m.name }

// Put sets key to value and returns the new version. Options may add an
// expiry or a fencing token to the write.
func (m *Map) Put(ctx context.Context, key, value []byte, opts ...WriteOption) (version uint64, err error) {
	if err := m.checkWrite(key, value); err != nil {
		return 0, err
	}
	part := m.partition(key)
	req := &gridpb.PutRequest{Header: m.header(), Key: key, Value: value, Crc: checksum(value)}
	for _, o := range opts {
		o(req)
	}
	if err := checkTTL(req.TtlNanos); err != nil {
		return 0, err
	}
	err = m.c.run(ctx, "put", m.c.newPicker(part, true), true, func(ctx context.Context, cc *grpc.ClientConn, _ target, opts ...grpc.CallOption) error {
		r, err := gridpb.NewKVClient(cc).Put(ctx, req, opts...)
		if err != nil {
			return err
		}
		version = r.GetVersion()
		return nil
	})
	return version, err
}

// Get returns key's value and version, or ErrNotFound. By default the read
// is linearizable: it sees every write acknowledged before it started.
func (m *Map) Get(ctx context.Context, key []byte, opts ...ReadOption) (value []byte, version uint64, err error) {
	e, err := m.GetEntry(ctx, key, opts...)
	if err != nil {
		return nil, 0, err
	}
	return e.Value, e.Version, nil
}

// GetEntry is Get that also says who served the read and how far that
// replica had applied its log.
func (m *Map) GetEntry(ctx context.Context, key []byte, opts ...ReadOption) (Entry, error) {
	if err := m.checkKey(key); err != nil {
		return Entry{}, err
	}
	ro := readOpts(opts)
	part := m.partition(key)
	req := &gridpb.GetRequest{Map: m.name, Key: key, Consistency: consistency(ro)}
	var e Entry
	err := m.c.run(ctx, "get", m.c.newPicker(part, !ro.stale), false, func(ctx context.Context, cc *grpc.ClientConn, t target, opts ...grpc.CallOption) error {
		r, err := gridpb.NewKVClient(cc).Get(ctx, req, opts...)
		if err != nil {
			return err
		}
		if !r.GetFound() {
			return fmt.Errorf("%w: %q in map %q", grid.ErrNotFound, key, m.name)
		}
		if err := verifyValue(m.name, key, r.GetValue(), r.GetCrc(), t.addr); err != nil {
			return err
		}
		e = Entry{
			Key: key, Value: r.GetValue(), Version: r.GetVersion(), Partition: part,
			AppliedIndex: r.GetAppliedIndex(), ServedBy: r.GetServedBy(), Expiry: expiryTime(r.GetExpiry()),
		}
		return nil
	})
	if err != nil {
		return Entry{}, err
	}
	return e, nil
}

// Delete removes key and reports whether it was there. Of the write
// options, Delete honours WithFence.
func (m *Map) Delete(ctx context.Context, key []byte, wopts ...WriteOption) (existed bool, err error) {
	if err := m.checkKey(key); err != nil {
		return false, err
	}
	fence, err := fenceOnly("delete", wopts)
	if err != nil {
		return false, err
	}
	part := m.partition(key)
	req := &gridpb.DeleteRequest{Header: m.header(), Key: key, Fence: fence}
	err = m.c.run(ctx, "delete", m.c.newPicker(part, true), true, func(ctx context.Context, cc *grpc.ClientConn, _ target, opts ...grpc.CallOption) error {
		r, err := gridpb.NewKVClient(cc).Delete(ctx, req, opts...)
		if err != nil {
			return err
		}
		existed = r.GetExisted()
		return nil
	})
	return existed, err
}

// CompareAndSwap sets key to value only if its version is expectedVersion;
// expectedVersion 0 means the key must not exist. It returns whether it
// swapped, and the key's version after the call: the new one if it swapped,
// else the current one (0 if absent), to retry against. Of the write
// options, CompareAndSwap honours WithTTL and WithFence (a stale token
// refuses the call whatever the version); an expired key counts as absent.
func (m *Map) CompareAndSwap(ctx context.Context, key []byte, expectedVersion uint64, value []byte, opts ...WriteOption) (swapped bool, version uint64, err error) {
	if err := m.checkWrite(key, value); err != nil {
		return false, 0, err
	}
	w, err := writeOpts(opts)
	if err != nil {
		return false, 0, err
	}
	return m.cas(ctx, &gridpb.CompareAndSwapRequest{
		Header: m.header(), Key: key, ExpectedVersion: expectedVersion, Value: value, Crc: checksum(value), TtlNanos: w.TtlNanos, Fence: w.Fence,
	})
}

// CompareAndDelete deletes key only if its version is expectedVersion. It
// returns whether it deleted, and otherwise the key's current version (0 if
// absent). Of the write options, it honours WithFence.
func (m *Map) CompareAndDelete(ctx context.Context, key []byte, expectedVersion uint64, opts ...WriteOption) (deleted bool, version uint64, err error) {
	if err := m.checkKey(key); err != nil {
		return false, 0, err
	}
	fence, err := fenceOnly("compare-and-delete", opts)
	if err != nil {
		return false, 0, err
	}
	return m.cas(ctx, &gridpb.CompareAndSwapRequest{
		Header: m.header(), Key: key, ExpectedVersion: expectedVersion, Delete: true, Fence: fence,
	})
}

func (m *Map) cas(ctx context.Context, req *gridpb.CompareAndSwapRequest) (swapped bool, version uint64, err error) {
	part := m.partition(req.GetKey())
	err = m.c.run(ctx, "compare-and-swap", m.c.newPicker(part, true), true, func(ctx context.Context, cc *grpc.ClientConn, _ target, opts ...grpc.CallOption) error {
		r, err := gridpb.NewKVClient(cc).CompareAndSwap(ctx, req, opts...)
		if err != nil {
			return err
		}
		swapped, version = r.GetSwapped(), r.GetVersion()
		return nil
	})
	return swapped, version, err
}

// Scan calls fn for every entry whose key starts with prefix (every entry,
// if prefix is empty), stopping at the first error fn returns and returning
// it. It reads the partitions one after another, a page at a time: keys come
// in order within a partition, but in no useful order across partitions.
//
// Each page is read with the requested consistency, but the scan as a whole
// is not a snapshot: a write made during the scan may or may not be seen.
// fn is never called for a page until the whole page has arrived intact, so
// a page that has to be retried is not delivered twice.
func (m *Map) Scan(ctx context.Context, prefix []byte, fn func(Entry) error, opts ...ReadOption) error {
	if err := grid.ValidateMapName(m.name); err != nil {
		return err
	}
	if len(prefix) > m.c.opts.limits.MaxKeyBytes {
		return fmt.Errorf("%w: prefix of %d bytes, limit %d", grid.ErrKeyTooLarge, len(prefix), m.c.opts.limits.MaxKeyBytes)
	}
	ro := readOpts(opts)
	parts := m.c.numPartitions()
	for p := 0; p < parts; p++ {
		if err := m.scanPartition(ctx, p, prefix, ro, fn); err != nil {
			return err
		}
	}
	return nil
}

func (m *Map) scanPartition(ctx context.Context, part int, prefix []byte, ro readOptions, fn func(Entry) error) error {
	limit := m.c.opts.scanPageSize
	var after []byte
	for {
		req := &gridpb.ScanRequest{
			Map: m.name, Partition: uint32(part), Prefix: prefix, StartAfter: after,
			Limit: uint32(limit), Consistency: consistency(ro),
		}
		var (
			page     []Entry
			more     bool
			servedBy string
		)
		err := m.c.run(ctx, "scan", m.c.newPicker(part, !ro.stale), false, func(ctx context.Context, cc *grpc.ClientConn, t target, opts ...grpc.CallOption) error {
			page, more, servedBy = page[:0], false, t.id
			stream, err := gridpb.NewKVClient(cc).Scan(ctx, req, opts...)
			if err != nil {
				return err
			}
			for {
				r, err := stream.Recv()
				if err == io.EOF {
					return nil
				}
				if err != nil {
					return err
				}
				for _, e := range r.GetEntries() {
					if err := verifyValue(m.name, e.GetKey(), e.GetValue(), e.GetCrc(), t.addr); err != nil {
						return err
					}
					page = append(page, Entry{
						Key: e.GetKey(), Value: e.GetValue(), Version: e.GetVersion(), Partition: part,
						AppliedIndex: r.GetAppliedIndex(), ServedBy: servedBy, Expiry: expiryTime(e.GetExpiry()),
					})
				}
				more = r.GetMore()
			}
		})
		if err != nil {
			// A page too big for one message, or an overloaded node:
			// ask for less.
			if status.Code(err) == codes.ResourceExhausted && limit > 1 {
				limit /= 2
				continue
			}
			return err
		}
		for _, e := range page {
			if err := fn(e); err != nil {
				return err
			}
		}
		if !more || len(page) == 0 {
			return nil
		}
		after = page[len(page)-1].Key
	}
}

func (m *Map) checkKey(key []byte) error {
	if err := grid.ValidateMapName(m.name); err != nil {
		return err
	}
	return m.c.opts.limits.CheckKey(key)
}

func (m *Map) checkWrite(key, value []byte) error {
	if err := m.checkKey(key); err != nil {
		return err
	}
	return m.c.opts.limits.CheckValue(value)
}

func (m *Map) partition(key []byte) int {
	return grid.PartitionOf(m.name, key, m.c.numPartitions())
}

// header is made once per logical write and reused by all its attempts.
func (m *Map) header() *gridpb.WriteHeader {
	return &gridpb.WriteHeader{Map: m.name, ClientId: m.c.clientID, Seq: m.c.seq.Add(1)}
}

func readOpts(opts []ReadOption) readOptions {
	var ro readOptions
	for _, o := range opts {
		o(&ro)
	}
	return ro
}

func consistency(ro readOptions) gridpb.Consistency {
	if ro.stale {
		return gridpb.Consistency_STALE
	}
	return gridpb.Consistency_LINEARIZABLE
}

// checksum is the CRC32C the nodes store with every value.
func checksum(value []byte) uint32 {
	return crc32.Checksum(value, crc32.MakeTable(crc32.Castagnoli))
}

// verifyValue checks a value a node sent against the CRC32C sent with it:
// a mismatch is ErrChecksum, never a wrong value.
func verifyValue(mapName string, key, value []byte, crc uint32, addr string) error {
	if got := checksum(value); got != crc {
		return fmt.Errorf("%w: %q in map %q from %s: value crc %08x, stored crc %08x",
			grid.ErrChecksum, key, mapName, addr, got, crc)
	}
	return nil
}
