package storage_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"

	"github.com/nats-io/nats.go/jetstream"
)

// BenchmarkBaselineJetStreamPublish is the floor BenchmarkPut compares with:
// a bare JetStream publish to the shard bucket, no service hop.
func BenchmarkBaselineJetStreamPublish(b *testing.B) {
	e := newEnv(b)
	e.start("0")
	js, _ := jetstream.New(e.nc)
	var n atomic.Int64
	val := make([]byte, 100)
	b.SetParallelism(16)
	b.ResetTimer()
	b.RunParallel(func(p *testing.PB) {
		for p.Next() {
			i := n.Add(1)
			if _, err := js.Publish(context.Background(), fmt.Sprintf("$KV.%s.k%d", subj.ShardBucket("0"), i%10000), val); err != nil {
				b.Error(err)
				return
			}
		}
	})
}
