package router_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/latchkey/latchkey/kit/natstest"
	"github.com/latchkey/latchkey/kit/subjects"
	pb "github.com/latchkey/latchkey/proto/latchkey/v1"
	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/proto"
)

// benchParallelism is goroutines per GOMAXPROCS for b.RunParallel.
var benchParallelism = []int{1, 8, 32}

// BenchmarkRouterGet measures kv.get through the router to shards that
// answer at once: client -> router -> shard -> router -> client, each on
// its own connection to one embedded server.
func BenchmarkRouterGet(b *testing.B) {
	e := newEnv(b, 3)
	reply := must(proto.Marshal(&pb.GetResponse{Found: true, Key: "k", Value: make([]byte, 64), Revision: 1}))
	for _, id := range ids(3) {
		sub, err := e.shards.Subscribe(e.set.Shard(id, "get"), func(m *nats.Msg) { _ = m.Respond(reply) })
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { _ = sub.Unsubscribe() })
	}
	req := must(proto.Marshal(&pb.GetRequest{Key: "user:42"}))
	runRequests(b, e.client, e.set.Public(subjects.KVGet), req)
}

// BenchmarkEcho1Hop is the floor: one request-reply hop to a responder
// that echoes, on the same kind of connections.
func BenchmarkEcho1Hop(b *testing.B) {
	url := natstest.Server(b).ClientURL()
	responder := natstest.Connect(b, url)
	sub, err := responder.Subscribe("bench.echo", func(m *nats.Msg) { _ = m.Respond(m.Data) })
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = sub.Unsubscribe() })
	_ = responder.Flush()
	runRequests(b, natstest.Connect(b, url), "bench.echo", make([]byte, 64))
}

func runRequests(b *testing.B, nc *nats.Conn, subject string, body []byte) {
	for _, p := range benchParallelism {
		b.Run(fmt.Sprintf("goroutines=%dxGOMAXPROCS", p), func(b *testing.B) {
			b.SetParallelism(p)
			start := time.Now()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					m, err := nc.Request(subject, body, 5*time.Second)
					if err != nil {
						b.Error(err)
						return
					}
					if m.Header.Get("Nats-Service-Error-Code") != "" {
						b.Errorf("error reply: %s", m.Header.Get("Nats-Service-Error"))
						return
					}
				}
			})
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "ops/s")
		})
	}
}
