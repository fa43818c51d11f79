package router_test

import (
	"context"
	"log"

	"github.com/latchkey/latchkey/services/router"
	"github.com/nats-io/nats.go"
)

// A router for a new three-shard deployment. The first router to start
// creates the shard map; later ones may pass Shards: 0 to use it.
func ExampleStart() {
	nc, err := nats.Connect(nats.DefaultURL)
	if err != nil {
		log.Fatal(err)
	}
	defer nc.Close()
	srv, err := router.Start(context.Background(), nc, router.Config{Shards: 3})
	if err != nil {
		log.Fatal(err) // e.g. router.ErrMigrationNeeded
	}
	defer srv.Stop(context.Background())
}
