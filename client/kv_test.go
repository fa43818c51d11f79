package client_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/latchkey/latchkey/client"
	"github.com/latchkey/latchkey/kit/natstest"
	pb "github.com/latchkey/latchkey/proto/latchkey/v1"
	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/proto"
)

// capture answers one public endpoint on a real NATS server with reply and
// hands the decoded request to the test, so the tests check what the
// client puts on the wire. Behaviour against real services is covered in
// tests/kv_test.go.
func capture[T proto.Message](t *testing.T, nc *nats.Conn, subject string, newReq func() T, reply proto.Message) <-chan T {
	t.Helper()
	got := make(chan T, 16)
	sub, err := nc.Subscribe(subject, func(m *nats.Msg) {
		req := newReq()
		if err := proto.Unmarshal(m.Data, req); err != nil {
			t.Errorf("decode %s: %v", subject, err)
		}
		got <- req
		data, _ := proto.Marshal(reply)
		_ = m.Respond(data)
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	return got
}

func TestPutOptionsOnTheWire(t *testing.T) {
	srv := natstest.Server(t)
	nc := natstest.Connect(t, srv.ClientURL())
	c := client.New(nc, client.WithPrefix("wire"))
	got := capture(t, nc, "wire.kv.put", func() *pb.PutRequest { return &pb.PutRequest{} }, &pb.PutResponse{Revision: 9})

	zero, seven := uint64(0), uint64(7)
	tests := []struct {
		name string
		opts []client.WriteOption
		want *pb.PutRequest
	}{
		{"plain", nil, &pb.PutRequest{Key: "k", Value: []byte("v")}},
		{"if absent sends expected 0", []client.WriteOption{client.IfAbsent()}, &pb.PutRequest{Key: "k", Value: []byte("v"), ExpectedRevision: &zero}},
		{"if revision", []client.WriteOption{client.IfRevision(7)}, &pb.PutRequest{Key: "k", Value: []byte("v"), ExpectedRevision: &seven}},
		{"ttl whole ms", []client.WriteOption{client.WithTTL(1500 * time.Millisecond)}, &pb.PutRequest{Key: "k", Value: []byte("v"), TtlMs: 1500}},
		{"ttl rounds up", []client.WriteOption{client.WithTTL(time.Second + time.Microsecond)}, &pb.PutRequest{Key: "k", Value: []byte("v"), TtlMs: 1001}},
		{"fence", []client.WriteOption{client.WithFence("L", 3)}, &pb.PutRequest{Key: "k", Value: []byte("v"), Fence: &pb.Fence{Lock: "L", Token: 3}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rev, err := c.Put(context.Background(), "k", []byte("v"), tt.opts...)
			if err != nil || rev != 9 {
				t.Fatalf("Put = %d, %v; want 9, nil", rev, err)
			}
			if req := <-got; !proto.Equal(req, tt.want) {
				t.Fatalf("request = %v; want %v", req, tt.want)
			}
		})
	}
}

func TestGetMissingIsNotFound(t *testing.T) {
	srv := natstest.Server(t)
	nc := natstest.Connect(t, srv.ClientURL())
	c := client.New(nc)
	got := capture(t, nc, "latchkey.kv.get", func() *pb.GetRequest { return &pb.GetRequest{} }, &pb.GetResponse{Found: false})

	_, err := c.Get(context.Background(), "nope", client.Stale())
	if !errors.Is(err, client.ErrNotFound) {
		t.Fatalf("Get missing = %v; want ErrNotFound", err)
	}
	if req := <-got; req.GetConsistency() != pb.Consistency_CONSISTENCY_STALE {
		t.Fatalf("consistency = %v; want STALE", req.GetConsistency())
	}
}

func TestDeleteRefusesTTL(t *testing.T) {
	srv := natstest.Server(t)
	nc := natstest.Connect(t, srv.ClientURL())
	_, _, err := client.New(nc).Delete(context.Background(), "k", client.WithTTL(time.Minute))
	if !errors.Is(err, client.ErrInvalid) {
		t.Fatalf("Delete with TTL = %v; want ErrInvalid", err)
	}
}

func TestNoServiceIsUnavailable(t *testing.T) {
	srv := natstest.Server(t)
	nc := natstest.Connect(t, srv.ClientURL())
	_, err := client.New(nc).Get(context.Background(), "k")
	if !errors.Is(err, client.ErrUnavailable) {
		t.Fatalf("Get with no router = %v; want ErrUnavailable", err)
	}
}
