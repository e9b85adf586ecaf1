package replication

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
)

// Engine kinds and profiles accepted in EngineConfig.
const (
	engineKindBadger     = "badger"
	engineKindBolt       = "bbolt"
	engineProfileSmall   = "small"
	engineProfileDefault = "default"
)

// engineMaxKeyBytes is the longest key either engine accepts (bbolt's limit;
// badger's is 65000). Both engines use the same limit because replicas of one
// partition may run different engines and must accept exactly the same batches.
const engineMaxKeyBytes = 32 << 10

// Files that mark a directory as holding one engine or the other.
const (
	badgerMarkerFile = "MANIFEST"
	boltFileName     = "engine.bolt"
)

var (
	errEngineConfig    = errors.New("replication: invalid engine config")
	errEngineClosed    = errors.New("replication: engine closed")
	errEngineInvalidOp = errors.New("replication: invalid engine op")
	errViewClosed      = errors.New("replication: engine view closed")
	// errBadgerUnsupported: badger's allocator shifts an int by 32 bits, which
	// is 0 where int is 32 bits, and silently corrupts tables once a table
	// builder outgrows its first buffer.
	errBadgerUnsupported = errors.New("replication: the badger engine is not available on 32-bit platforms " +
		"(it silently corrupts its tables there); use bbolt")
)

var (
	_ Engine = (*boltEngine)(nil)
	_ View   = (*boltView)(nil)
)

// Validate reports every problem with the config at once.
func (c EngineConfig) Validate() error {
	var errs []error
	if c.Dir == "" {
		errs = append(errs, fmt.Errorf("%w: Dir is empty", errEngineConfig))
	}
	switch c.Kind {
	case "", engineKindBolt:
	case engineKindBadger:
		if !badgerSupported {
			errs = append(errs, fmt.Errorf("%w: %w", errEngineConfig, errBadgerUnsupported))
		}
	default:
		errs = append(errs, fmt.Errorf("%w: Kind %q is not %q, %q or empty (platform default)",
			errEngineConfig, c.Kind, engineKindBadger, engineKindBolt))
	}
	switch c.Profile {
	case "", engineProfileSmall, engineProfileDefault:
	default:
		errs = append(errs, fmt.Errorf("%w: Profile %q is not %q, %q or empty (small)",
			errEngineConfig, c.Profile, engineProfileSmall, engineProfileDefault))
	}
	return errors.Join(errs...)
}

// OpenEngine opens (creating if needed) the engine cfg describes: cfg.Kind, or
// the platform default when it is empty (bbolt on 32-bit platforms, badger
// elsewhere). It refuses a directory that holds the other kind of engine.
func OpenEngine(cfg EngineConfig) (Engine, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Kind == "" {
		cfg.Kind = defaultEngineKind()
	}
	if cfg.Profile == "" {
		cfg.Profile = engineProfileSmall
	}
	if err := os.MkdirAll(cfg.Dir, 0o750); err != nil {
		return nil, fmt.Errorf("replication: engine dir: %w", err)
	}
	if err := checkEngineDir(cfg.Dir, cfg.Kind); err != nil {
		return nil, err
	}
	if cfg.Kind == engineKindBadger {
		return openBadger(cfg)
	}
	e, err := openBoltEngine(cfg)
	if err != nil {
		return nil, err // not a nil *boltEngine in a non-nil Engine
	}
	return e, nil
}

// checkEngineDir refuses to open kind in a directory written by the other
// engine: the new engine would start empty and silently ignore the data.
func checkEngineDir(dir, kind string) error {
	other, marker := engineKindBolt, boltFileName
	if kind == engineKindBolt {
		other, marker = engineKindBadger, badgerMarkerFile
	}
	_, err := os.Stat(filepath.Join(dir, marker))
	switch {
	case err == nil:
		return fmt.Errorf("%w: %s holds a %s engine, not %s", errEngineConfig, dir, other, kind)
	case errors.Is(err, os.ErrNotExist):
		return nil
	default:
		return fmt.Errorf("replication: engine dir: %w", err)
	}
}

// checkBatch returns the batch's size, or why the engine must refuse it. The
// size is recomputed from the ops because Ops is exported and may have been
// filled without Set and Del.
func checkBatch(b *Batch, maxBytes int) (int, error) {
	size := 0
	for i := range b.Ops {
		op := &b.Ops[i]
		switch {
		case len(op.Key) == 0:
			return 0, fmt.Errorf("%w: op %d has an empty key", errEngineInvalidOp, i)
		case len(op.Key) > engineMaxKeyBytes:
			return 0, fmt.Errorf("%w: op %d key is %d bytes, limit %d", errEngineInvalidOp, i, len(op.Key), engineMaxKeyBytes)
		}
		size += len(op.Key) + opOverhead
		if !op.Delete {
			size += len(op.Value)
		}
		if size > maxBytes {
			return size, fmt.Errorf("%w: more than %d bytes at op %d", ErrBatchTooLarge, maxBytes, i)
		}
	}
	return size, nil
}

// iterSeek is where an iteration over prefix, strictly after after, starts,
// and whether a key equal to the seek key must be skipped.
func iterSeek(prefix, after []byte) (seek []byte, skipEqual bool) {
	if after != nil && bytes.Compare(after, prefix) >= 0 {
		return after, true
	}
	return prefix, false
}

// engineState guards an engine against use after Close. Every operation holds
// mu shared; Close holds it exclusively, so it waits for operations in flight.
// Close refuses while views are open: bbolt's Close would wait for their read
// transactions forever, and badger's would pull the data from under them.
type engineState struct {
	mu     sync.RWMutex
	closed bool
	views  atomic.Int64
}

func (s *engineState) enter() error {
	s.mu.RLock()
	if s.closed {
		s.mu.RUnlock()
		return errEngineClosed
	}
	return nil
}

func (s *engineState) leave() { s.mu.RUnlock() }

// shut marks the engine closed; first is false if it already was.
func (s *engineState) shut() (first bool, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false, nil
	}
	if n := s.views.Load(); n > 0 {
		return false, fmt.Errorf("replication: engine close: %d views still open", n)
	}
	s.closed = true
	return true, nil
}
