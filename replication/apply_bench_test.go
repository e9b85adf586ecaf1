package replication

import (
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"

	"github.com/zerogrid/zerogrid/grid/gridpb"
)

// BenchmarkApplyPuts applies batches of 64 puts of 256-byte values to one
// partition's state machine on the small badger profile.
func BenchmarkApplyPuts(b *testing.B) {
	eng, err := OpenEngine(EngineConfig{Dir: filepath.Join(b.TempDir(), "engine"), Profile: "small"})
	if err != nil {
		b.Fatal(err)
	}
	defer eng.Close()
	sm, err := newStateMachine(3, eng, mustApplier(b, eng), nil, func(err error) { b.Fatal(err) })
	if err != nil {
		b.Fatal(err)
	}
	val := make([]byte, 256)
	now := time.Now().UnixNano()
	idx := uint64(2)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		logs := make([]*raft.Log, 64)
		for j := range logs {
			idx++
			data, _ := proto.Marshal(&gridpb.Command{LeaderTime: now, Op: &gridpb.Command_Put{Put: &gridpb.PutOp{
				Map: "m", Key: []byte(fmt.Sprintf("key-%07d", idx%20000)), Value: val,
			}}})
			logs[j] = &raft.Log{Index: idx, Type: raft.LogCommand, Data: data}
		}
		sm.ApplyBatch(logs)
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*64)/1000, "µs/put")
}

func mustApplier(b *testing.B, eng Engine) *kvApplier {
	a, err := newKVApplier(3, eng, DefaultWatchRetention(), newChecks(), &corruption{})
	if err != nil {
		b.Fatal(err)
	}
	return a
}
