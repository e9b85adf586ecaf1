//go:build !arm

package replication

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/dgraph-io/badger/v4"
	"github.com/dgraph-io/badger/v4/options"
)

var (
	_ Engine = (*badgerEngine)(nil)
	_ View   = (*badgerView)(nil)
)

// badgerOptions returns the options and the largest batch for a profile.
//
// "small" (the default) is for 512 MB machines. The Go heap it holds by
// design: two memtables, each an arena of MemTableSize plus room for one
// maximal transaction (8 + 1.2 + 1.2 MB), ~21 MB; the block cache, 8 MB; the
// index and bloom filter cache, 4 MB. Compactions add their table builders
// on top, while they run. The active value log is mapped at twice
// ValueLogFileSize (128 MB of address space, paged in as read). Values of
// 64 KiB and more go to the value log; smaller ones stay in the LSM tree,
// where compaction reclaims their space without value-log GC.
//
// "default" is badger's own, which takes ~600 MB at 1M keys.
func badgerOptions(cfg EngineConfig) (badger.Options, int) {
	opt := badger.DefaultOptions(cfg.Dir)
	opt.Logger = nil
	opt.SyncWrites = cfg.SyncWrites
	// Writes are blind (no reads in the transaction) and already ordered by
	// Raft, so conflict detection would only cost memory.
	opt.DetectConflicts = false
	// Only Stream uses these, and Stream is never used here: it buffers
	// 16 MB per goroutine.
	opt.NumGoroutines = 2
	// MetricsEnabled stays on: DB.Size reads its figures from the metrics.
	maxBatch := 8 << 20 // badger's transaction cap at a 64 MB memtable is 9.6 MB.
	if cfg.Profile != engineProfileDefault {
		opt.MemTableSize = 8 << 20
		opt.NumMemtables = 2
		opt.NumLevelZeroTables = 2
		opt.NumLevelZeroTablesStall = 8
		opt.NumCompactors = 2
		opt.BlockCacheSize = 8 << 20
		opt.IndexCacheSize = 4 << 20
		opt.ValueLogFileSize = 64 << 20
		opt.ValueThreshold = 64 << 10
		// Table builders (memtable flushes and compactions) preallocate
		// twice their table size, levels' tables grow by
		// TableSizeMultiplier, and badger pools up to 8 builder buffers:
		// at 1M keys those buffers were ~230 MB of each node's heap. Small
		// tables of one size and no block compression (which also runs
		// 2×NumCPU goroutines with buffers of their own per builder) keep
		// them to a few MB; values here are small or already in the value
		// log, and the disk cost is measured in BENCHMARKS.md.
		opt.BaseTableSize = 1 << 20
		opt.TableSizeMultiplier = 1
		opt.Compression = options.None
		// Transaction cap: 15% of MemTableSize = 1.2 MB. A 1 MiB value (the
		// grid's default limit), a 4 KiB key and the applied index fit.
		maxBatch = 1152 << 10
	}
	return opt, maxBatch
}

// badgerEngine is the engine on 64-bit platforms.
type badgerEngine struct {
	db             *badger.DB
	state          engineState
	maxBatch       int
	maxOps         int
	valueThreshold int
	// dropMu is held shared by Write and value-log GC and exclusively by
	// DropPrefix: while badger drops a prefix it fails concurrent writes
	// (ErrBlockedWrites), so they wait here instead.
	dropMu sync.RWMutex

	// Value-log GC: badger never reclaims value-log space by itself. A
	// goroutine owned by the engine runs it after every vlogGCEvery bytes
	// of values written to the value log, and after every DropPrefix.
	vlogGCEvery int64
	vlogBytes   atomic.Int64
	gcKick      chan struct{}
	gcStop      chan struct{}
	gcDone      chan struct{}
}

func openBadgerEngine(cfg EngineConfig) (*badgerEngine, error) {
	opt, maxBatch := badgerOptions(cfg)
	// Write checks the batch against maxBatch before badger sees it, so a
	// batch it accepts must never hit badger's ErrTxnTooBig. Badger counts at
	// most 24 bytes per entry on top of key and value (Batch counts 32), and
	// 21 for its commit marker.
	if txnCap := 15 * opt.MemTableSize / 100; int64(maxBatch) >= txnCap {
		return nil, fmt.Errorf("%w: badger batch limit %d is not below the transaction cap %d",
			errEngineConfig, maxBatch, txnCap)
	}
	if opt.ValueThreshold >= 15*opt.MemTableSize/100 {
		return nil, fmt.Errorf("%w: badger value threshold %d is too large for memtable size %d",
			errEngineConfig, opt.ValueThreshold, opt.MemTableSize)
	}
	db, err := badger.Open(opt)
	if err != nil {
		return nil, fmt.Errorf("replication: open badger engine: %w", err)
	}
	e := &badgerEngine{
		db:       db,
		maxBatch: maxBatch,
		// Badger also caps the entries in a transaction, at the transaction
		// cap over the size of a skiplist node (96 bytes), counting one for
		// its commit marker; a batch of many tiny ops can reach that below
		// maxBatch bytes.
		maxOps:         int(db.MaxBatchCount()) - 2,
		valueThreshold: int(opt.ValueThreshold),
		vlogGCEvery:    opt.ValueLogFileSize,
		gcKick:         make(chan struct{}, 1),
		gcStop:         make(chan struct{}),
		gcDone:         make(chan struct{}),
	}
	go e.gcLoop()
	return e, nil
}

func (e *badgerEngine) Write(ctx context.Context, b *Batch) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := e.state.enter(); err != nil {
		return err
	}
	defer e.state.leave()
	if b == nil || len(b.Ops) == 0 {
		return nil
	}
	if _, err := checkBatch(b, e.maxBatch); err != nil {
		return err
	}
	if len(b.Ops) > e.maxOps {
		return fmt.Errorf("%w: %d ops, badger takes at most %d in one transaction",
			ErrBatchTooLarge, len(b.Ops), e.maxOps)
	}
	e.dropMu.RLock()
	defer e.dropMu.RUnlock()
	var vlog int64
	err := e.db.Update(func(txn *badger.Txn) error {
		for i := range b.Ops {
			op := &b.Ops[i]
			var err error
			if op.Delete {
				err = txn.Delete(op.Key)
			} else {
				err = txn.Set(op.Key, op.Value)
				if len(op.Value) >= e.valueThreshold {
					vlog += int64(len(op.Value))
				}
			}
			if err != nil {
				return fmt.Errorf("op %d: %w", i, err)
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("replication: badger write: %w", err)
	}
	if vlog > 0 && e.vlogBytes.Add(vlog) >= e.vlogGCEvery {
		e.vlogBytes.Store(0)
		e.kickGC()
	}
	return nil
}

func (e *badgerEngine) Get(key []byte) ([]byte, error) {
	if err := e.state.enter(); err != nil {
		return nil, err
	}
	defer e.state.leave()
	var val []byte
	err := e.db.View(func(txn *badger.Txn) error {
		var err error
		val, err = badgerGet(txn, key)
		return err
	})
	return val, err
}

// badgerGet returns a copy of key's value: badger's own slice may point into
// a table or value-log mapping that compaction or GC can release.
func badgerGet(txn *badger.Txn, key []byte) ([]byte, error) {
	if len(key) == 0 {
		return nil, ErrEngineNotFound
	}
	item, err := txn.Get(key)
	if errors.Is(err, badger.ErrKeyNotFound) {
		return nil, ErrEngineNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("replication: badger get: %w", err)
	}
	val, err := item.ValueCopy(nil)
	if err != nil {
		return nil, fmt.Errorf("replication: badger get: %w", err)
	}
	if val == nil {
		val = []byte{}
	}
	return val, nil
}

// NewView opens a read-only transaction at the latest commit. A view does not
// isolate its reader from a concurrent DropPrefix of the prefix it reads.
func (e *badgerEngine) NewView() (View, error) {
	if err := e.state.enter(); err != nil {
		return nil, err
	}
	defer e.state.leave()
	e.state.views.Add(1)
	return &badgerView{txn: e.db.NewTransaction(false), state: &e.state}, nil
}

// DropPrefix uses badger's DropPrefix, which drops the prefix from the
// memtables and every level and is durable when it returns. Writes wait
// meanwhile.
func (e *badgerEngine) DropPrefix(ctx context.Context, prefix []byte) error {
	if len(prefix) == 0 {
		return fmt.Errorf("%w: empty prefix for DropPrefix", errEngineInvalidOp)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := e.state.enter(); err != nil {
		return err
	}
	defer e.state.leave()
	e.dropMu.Lock()
	err := e.db.DropPrefix(prefix)
	e.dropMu.Unlock()
	if err != nil {
		return fmt.Errorf("replication: badger drop prefix: %w", err)
	}
	e.kickGC()
	return nil
}

func (e *badgerEngine) Sync() error {
	if err := e.state.enter(); err != nil {
		return err
	}
	defer e.state.leave()
	if err := e.db.Sync(); err != nil {
		return fmt.Errorf("replication: badger sync: %w", err)
	}
	return nil
}

// Stats reports the tables and value logs on disk. Badger measures them at
// open and then once a minute, so the figure lags by up to a minute.
func (e *badgerEngine) Stats() EngineStats {
	st := EngineStats{Kind: engineKindBadger}
	if e.state.enter() == nil {
		lsm, vlog := e.db.Size()
		e.state.leave()
		st.DiskBytes = lsm + vlog
	}
	return st
}

// Verify checks the checksum of every table block. Memtables and the value
// log are not covered.
func (e *badgerEngine) Verify(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := e.state.enter(); err != nil {
		return err
	}
	defer e.state.leave()
	if err := e.db.VerifyChecksum(); err != nil {
		return fmt.Errorf("replication: badger verify: %w", err)
	}
	return nil
}

func (e *badgerEngine) MaxBatchBytes() int { return e.maxBatch }

// Close fails while views are open; it is a no-op once closed. It stops the
// value-log GC (waiting for a pass in progress) and flushes the memtable.
func (e *badgerEngine) Close() error {
	first, err := e.state.shut()
	if !first {
		return err
	}
	close(e.gcStop)
	<-e.gcDone
	if err := e.db.Close(); err != nil {
		return fmt.Errorf("replication: close badger engine: %w", err)
	}
	return nil
}

func (e *badgerEngine) kickGC() {
	select {
	case e.gcKick <- struct{}{}:
	default: // a pass is already due
	}
}

func (e *badgerEngine) gcLoop() {
	defer close(e.gcDone)
	for {
		select {
		case <-e.gcStop:
			return
		case <-e.gcKick:
			e.collectValueLog()
		}
	}
}

// collectValueLog rewrites value-log files that are at least half garbage,
// one per round, until none is left or the engine closes. Errors are not
// reported: ErrNoRewrite means nothing was worth rewriting, and a pass that
// failed otherwise is retried at the next kick.
func (e *badgerEngine) collectValueLog() {
	e.dropMu.RLock()
	defer e.dropMu.RUnlock()
	for {
		select {
		case <-e.gcStop:
			return
		default:
		}
		if e.db.RunValueLogGC(0.5) != nil {
			return
		}
	}
}

// badgerView is a read-only badger transaction.
type badgerView struct {
	txn    *badger.Txn
	state  *engineState
	closed bool
}

func (v *badgerView) Get(key []byte) ([]byte, error) {
	if v.closed {
		return nil, errViewClosed
	}
	return badgerGet(v.txn, key)
}

func (v *badgerView) Iterate(prefix, after []byte, fn func(k, val []byte) (bool, error)) error {
	if v.closed {
		return errViewClosed
	}
	seek, skipEqual := iterSeek(prefix, after)
	// Values are read one at a time inside fn's call: prefetching would copy
	// each of them, from background goroutines.
	it := v.txn.NewIterator(badger.IteratorOptions{Prefix: prefix})
	defer it.Close()
	for it.Seek(seek); it.ValidForPrefix(prefix); it.Next() {
		item := it.Item()
		k := item.Key()
		if skipEqual && bytes.Equal(k, after) {
			continue
		}
		var more bool
		var fnErr error
		err := item.Value(func(val []byte) error {
			more, fnErr = fn(k, val)
			return fnErr
		})
		if fnErr != nil {
			return fnErr
		}
		if err != nil {
			return fmt.Errorf("replication: badger iterate: %w", err)
		}
		if !more {
			return nil
		}
	}
	return nil
}

func (v *badgerView) Close() {
	if v.closed {
		return
	}
	v.closed = true
	v.txn.Discard()
	v.state.views.Add(-1)
}
