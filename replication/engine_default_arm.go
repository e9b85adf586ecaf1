//go:build arm

package replication

// badger must not run on 32-bit ARM (see errBadgerUnsupported); it is not
// even compiled in.
const badgerSupported = false

func defaultEngineKind() string { return engineKindBolt }

func openBadger(EngineConfig) (Engine, error) { return nil, errBadgerUnsupported }
