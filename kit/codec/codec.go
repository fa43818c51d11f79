// Package codec reads and writes latchkey message bodies: protobuf, or
// protojson when the request says JSON. The code lives in kit/wire, which
// the Go client shares without linking the service runtime; this package
// keeps the name the services use.
package codec

import (
	"github.com/latchkey/latchkey/kit/wire"
	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/proto"
)

// ContentTypeJSON is the Content-Type value that selects protojson.
const ContentTypeJSON = wire.ContentTypeJSON

// IsJSON reports whether a request body is protojson (see wire.IsJSON).
func IsJSON(h nats.Header, data []byte) bool { return wire.IsJSON(h, data) }

// Decode fills m from data; malformed bodies are 400s (see wire.Decode).
func Decode(data []byte, asJSON bool, m proto.Message) error { return wire.Decode(data, asJSON, m) }

// Encode writes m as protojson or protobuf (see wire.Encode).
func Encode(m proto.Message, asJSON bool) ([]byte, error) { return wire.Encode(m, asJSON) }
