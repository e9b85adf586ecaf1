//go:build !arm

package replication

import "strconv"

// badgerSupported: badger corrupts its tables wherever int is 32 bits (see
// errBadgerUnsupported), so on 386 or mips it is refused as on 32-bit ARM.
const badgerSupported = strconv.IntSize == 64

func defaultEngineKind() string {
	if badgerSupported {
		return engineKindBadger
	}
	return engineKindBolt
}

func openBadger(cfg EngineConfig) (Engine, error) {
	e, err := openBadgerEngine(cfg)
	if err != nil {
		return nil, err // not a nil *badgerEngine in a non-nil Engine
	}
	return e, nil
}
