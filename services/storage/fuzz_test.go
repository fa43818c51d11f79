package storage_test

import (
	"errors"
	"testing"

	"github.com/latchkey/latchkey/kit/apierr"
	pb "github.com/latchkey/latchkey/proto/latchkey/v1"
	"github.com/latchkey/latchkey/services/storage"
	"google.golang.org/protobuf/proto"
)

// FuzzDecodeAndValidate feeds arbitrary bodies to the request decoder: it
// must never panic, must fail only with a 400 or 413, and whatever it
// accepts must satisfy the limits.
func FuzzDecodeAndValidate(f *testing.F) {
	seed := func(m proto.Message) []byte { b, _ := proto.Marshal(m); return b }
	f.Add("put", seed(&pb.PutRequest{Key: "k", Value: []byte("v"), TtlMs: 1000}), false)
	f.Add("put", seed(&pb.PutRequest{Key: "a.b*>", Fence: &pb.Fence{Lock: "L", Token: 3}}), false)
	f.Add("delete", seed(&pb.DeleteRequest{Key: "k", ExpectedRevision: proto.Uint64(0)}), false)
	f.Add("get", seed(&pb.GetRequest{Key: "k", Consistency: pb.Consistency_CONSISTENCY_STALE}), false)
	f.Add("scan", seed(&pb.ScanRequest{Prefix: "p", Limit: 1000, After: "p1"}), false)
	f.Add("get", []byte(`{"key":"user:42","consistency":"CONSISTENCY_STALE"}`), true)
	f.Add("put", []byte(`{"key":"k","value":"aGk=","ttl_ms":"500"}`), true)
	f.Add("scan", []byte(`{"limit":5000}`), true)
	f.Add("put", []byte{0xff, 0x01}, false)
	f.Fuzz(func(t *testing.T, op string, data []byte, asJSON bool) {
		const maxValue = 4096
		m, err := storage.DecodeRequest(op, data, asJSON, maxValue)
		if err != nil {
			if !errors.Is(err, apierr.ErrInvalid) && !errors.Is(err, apierr.ErrTooLarge) {
				t.Fatalf("decode %s: error of kind %v: %v", op, apierr.From(err).Kind, err)
			}
			return
		}
		switch r := m.(type) {
		case *pb.PutRequest:
			if r.Key == "" || len(r.Key) > 1024 || len(r.Value) > maxValue || (r.TtlMs != 0 && r.TtlMs < 1000) ||
				(r.Fence != nil && (r.Fence.Token == 0 || r.Fence.Lock == "")) {
				t.Fatalf("accepted bad put %v", r)
			}
		case *pb.GetRequest:
			if r.Key == "" || len(r.Key) > 1024 {
				t.Fatalf("accepted bad get %v", r)
			}
		case *pb.DeleteRequest:
			if r.Key == "" || len(r.Key) > 1024 {
				t.Fatalf("accepted bad delete %v", r)
			}
		case *pb.ScanRequest:
			if r.Limit > 1000 || len(r.Prefix) > 1024 || len(r.After) > 1024 {
				t.Fatalf("accepted bad scan %v", r)
			}
		}
	})
}
