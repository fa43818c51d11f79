module github.com/latchkey/latchkey/tests

go 1.26.0

require (
	github.com/latchkey/latchkey/client v0.0.0-00010101000000-000000000000
	github.com/latchkey/latchkey/kit v0.0.0-00010101000000-000000000000
	github.com/latchkey/latchkey/proto v0.0.0-00010101000000-000000000000
	github.com/latchkey/latchkey/services/locker v0.0.0-00010101000000-000000000000
	github.com/latchkey/latchkey/services/router v0.0.0-00010101000000-000000000000
	github.com/latchkey/latchkey/services/storage v0.0.0-00010101000000-000000000000
)

require github.com/anishathalye/porcupine v1.3.1 // indirect

replace (
	github.com/latchkey/latchkey/client => ../client
	github.com/latchkey/latchkey/kit => ../kit
	github.com/latchkey/latchkey/proto => ../proto
	github.com/latchkey/latchkey/services/locker => ../services/locker
	github.com/latchkey/latchkey/services/router => ../services/router
	github.com/latchkey/latchkey/services/storage => ../services/storage
)
