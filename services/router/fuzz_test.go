package router

import (
	"errors"
	"testing"
	"unicode/utf8"

	"github.com/latchkey/latchkey/kit/apierr"
	"github.com/latchkey/latchkey/kit/codec"
	"github.com/latchkey/latchkey/kit/limits"
	"github.com/latchkey/latchkey/kit/service"
	pb "github.com/latchkey/latchkey/proto/latchkey/v1"
	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/proto"
)

// FuzzRouteRequest feeds arbitrary bodies to the router's decode and check
// step: it must never panic, must refuse only with a 400 or 413, and what it
// accepts must be within the limits a shard relies on.
func FuzzRouteRequest(f *testing.F) {
	seed := func(op uint8, m proto.Message) {
		data, _ := proto.Marshal(m)
		f.Add(op, data)
	}
	seed(0, &pb.GetRequest{Key: "user:42", Consistency: pb.Consistency_CONSISTENCY_STALE})
	seed(1, &pb.PutRequest{Key: "a", Value: []byte("v"), TtlMs: 1000, Fence: &pb.Fence{Lock: "l", Token: 3}})
	seed(2, &pb.DeleteRequest{Key: "a", ExpectedRevision: proto.Uint64(0)})
	seed(3, &pb.ScanRequest{Prefix: "p", Limit: 1000, After: "p1"})
	f.Add(uint8(0), []byte(`{"key":"a","consistency":"CONSISTENCY_LINEARIZABLE"}`))
	f.Add(uint8(1), []byte(`{"key":"a","value":"dg==","ttl_ms":"999"}`))
	f.Add(uint8(3), []byte(`{"limit":1001}`))
	f.Add(uint8(2), []byte{0x0a, 0x01, 0xff})

	const maxValue = 64
	f.Fuzz(func(t *testing.T, op uint8, data []byte) {
		var m proto.Message
		switch op % 4 {
		case 0:
			m = &pb.GetRequest{}
		case 1:
			m = &pb.PutRequest{}
		case 2:
			m = &pb.DeleteRequest{}
		default:
			m = &pb.ScanRequest{}
		}
		msg := &nats.Msg{Data: data, Header: nats.Header{}}
		r := &service.Request{Msg: msg, JSON: codec.IsJSON(msg.Header, data)}
		err := decodeCheck(r, m, maxValue)
		if err != nil {
			var e *apierr.Error
			if !errors.As(err, &e) || (e.Code() != 400 && e.Code() != 413) || e.Message == "" {
				t.Fatalf("refused with %T %v, want a 400 or 413 *apierr.Error with a sentence", err, err)
			}
			return
		}
		okKey := func(k string, allowEmpty bool) bool {
			return (allowEmpty || k != "") && len(k) <= limits.MaxKeyBytes && utf8.ValidString(k)
		}
		okFence := func(f *pb.Fence) bool {
			return f == nil || (f.Token > 0 && f.Lock != "" && len(f.Lock) <= limits.MaxLockNameBytes)
		}
		switch v := m.(type) {
		case *pb.GetRequest:
			if !okKey(v.Key, false) || v.Consistency < 0 || v.Consistency > 2 {
				t.Fatalf("accepted %v", v)
			}
		case *pb.PutRequest:
			ttlOK := v.TtlMs == 0 || (v.TtlMs >= limits.MinTTLMillis && v.TtlMs <= limits.MaxTTLMillis)
			if !okKey(v.Key, false) || len(v.Value) > maxValue || !ttlOK || !okFence(v.Fence) {
				t.Fatalf("accepted %v", v)
			}
		case *pb.DeleteRequest:
			if !okKey(v.Key, false) || !okFence(v.Fence) {
				t.Fatalf("accepted %v", v)
			}
		case *pb.ScanRequest:
			if !okKey(v.Prefix, true) || !okKey(v.After, true) || v.Limit > limits.MaxScanLimit {
				t.Fatalf("accepted %v", v)
			}
		}
	})
}
