package natsembed

import "github.com/nats-io/nats-server/v2/server"

// EventsUser is the user name of the watch event connection in servers set
// up by WatchUsers.
const EventsUser = "latchkey-events"

// EventPermissions are what the watch event connection needs and no more:
// publish to _INBOX.> (a watch's deliver subject), subscribe to nothing
// but its own _INBOX.> (nats.go's request plumbing, never used by
// storage). Nothing else: never $JS.API.> or $KV.>, so a watch cannot be
// turned into a way to make storage write to JetStream.
func EventPermissions() *server.Permissions {
	return &server.Permissions{
		Publish:   &server.SubjectPermission{Allow: []string{"_INBOX.>"}},
		Subscribe: &server.SubjectPermission{Allow: []string{"_INBOX.>"}},
	}
}

// WatchUsers returns the users of a server on which clients without
// credentials get every permission (user "latchkey", the no-auth user)
// and the watch event connection logs in as EventsUser with password
// and EventPermissions. Set Options.Users and Options.NoAuthUser from it.
func WatchUsers(password string) (users []*server.User, noAuthUser string) {
	return []*server.User{
		{Username: "latchkey", Password: ""},
		{Username: EventsUser, Password: password, Permissions: EventPermissions()},
	}, "latchkey"
}
