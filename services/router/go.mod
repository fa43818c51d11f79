module github.com/latchkey/latchkey/services/router

go 1.26.0

require (
	github.com/latchkey/latchkey/proto v0.0.0-00010101000000-000000000000
	github.com/latchkey/latchkey/kit v0.0.0-00010101000000-000000000000
)

replace (
	github.com/latchkey/latchkey/proto => ../../proto
	github.com/latchkey/latchkey/kit => ../../kit
)
