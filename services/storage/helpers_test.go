package storage_test

import (
	"context"
	"os"

	"github.com/latchkey/latchkey/kit/service"
	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/proto"
)

func tempDir() string {
	d, err := os.MkdirTemp("", "latchkey-storage-example")
	if err != nil {
		panic(err)
	}
	return d
}

func storageCall(ctx context.Context, nc *nats.Conn, op string, req, resp proto.Message) error {
	return service.Call(ctx, nc, subj.Shard("0", op), nil, req, resp)
}
