package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go"

	"gitea.stevedudenhoeffer.com/steve/foreman/ollama"
)

// CheckNATSLogin says what is wrong with the settings foreman logs in to an external NATS
// with: they need FOREMAN_NATS_URL (the embedded server has its own users), and a creds
// file and an nkey seed are two ways of the same login.
func CheckNATSLogin(c Config) error {
	if c.NATSURL == "" {
		for _, s := range []struct{ name, v string }{
			{"FOREMAN_NATS_CREDS", c.NATSCreds}, {"FOREMAN_NATS_NKEY_SEED", c.NATSNkeySeed}, {"FOREMAN_NATS_CA", c.NATSCA},
		} {
			if s.v != "" {
				return fmt.Errorf("%s=%q needs FOREMAN_NATS_URL: it logs in to an external NATS, and the embedded server has no use for it "+
					"(its listener takes FOREMAN_NATS_USER/FOREMAN_NATS_PASSWORD, FOREMAN_NATS_NKEY and FOREMAN_NATS_TLS_CERT/KEY)", s.name, s.v)
			}
		}
	}
	if c.NATSCreds != "" && c.NATSNkeySeed != "" {
		return errors.New("FOREMAN_NATS_CREDS and FOREMAN_NATS_NKEY_SEED exclude each other: a .creds file holds its own nkey seed")
	}
	return nil
}

// CheckNATSListener says what is wrong with the settings of the embedded server's NATS
// listener for clients: without FOREMAN_NATS_LISTEN there is no listener, and with
// FOREMAN_NATS_URL no embedded server, so they would do nothing. With FOREMAN_NATS_URL
// they may be meant to log in to it, which its URL and the settings CheckNATSLogin checks
// do: the message says so.
func CheckNATSListener(c Config) error {
	if c.NATSListen != "" {
		return nil
	}
	for _, s := range []struct {
		name, v string
		tls     bool
	}{
		// Not FOREMAN_NATS_USER and FOREMAN_NATS_PASSWORD: the CLI logs in with them too
		// (jobs watch, submit --wait), and a shell that sets them for it runs serve too.
		{"FOREMAN_NATS_NKEY", c.NATSNkey, false},
		{"FOREMAN_NATS_TLS_CERT", c.NATSTLSCert, true}, {"FOREMAN_NATS_TLS_KEY", c.NATSTLSKey, true},
	} {
		switch {
		case s.v == "":
		case c.NATSURL == "":
			return fmt.Errorf("%s needs FOREMAN_NATS_LISTEN: it is a setting of the embedded server's NATS listener for clients, which is off without it", s.name)
		case s.tls:
			return fmt.Errorf("%s is a setting of the embedded server's NATS listener, and with FOREMAN_NATS_URL none runs: "+
				"to reach FOREMAN_NATS_URL over TLS, give it tls:// URLs (and FOREMAN_NATS_CA for a private CA)", s.name)
		default:
			return fmt.Errorf("%s is a setting of the embedded server's NATS listener, and with FOREMAN_NATS_URL none runs: "+
				"to log in to FOREMAN_NATS_URL with an nkey, use FOREMAN_NATS_NKEY_SEED (or FOREMAN_NATS_CREDS, "+
				"or a user and password in its URL: nats://user:password@host:4222)", s.name)
		}
	}
	return nil
}

// natsOptions are the options foreman connects to FOREMAN_NATS_URL with: reconnect to
// another node for ever, give a server's handshake (TLS, a login checked against a
// bcrypt hash) 5 s where nats.go gives 2 s, a busy server is no dead one, leave a node
// that answers no ping for natsPingInterval × (natsMaxPingsOut+1) at most, and log in as
// the settings say (user and password may also be in the URL itself).
func natsOptions(c Config) ([]nats.Option, error) {
	opts := []nats.Option{
		nats.Name("foreman"), nats.MaxReconnects(-1), nats.Timeout(natsConnectTimeout),
		nats.PingInterval(natsPingInterval), nats.MaxPingsOutstanding(natsMaxPingsOut),
	}
	if c.NATSCreds != "" {
		opts = append(opts, nats.UserCredentials(c.NATSCreds))
	}
	if c.NATSNkeySeed != "" {
		o, err := nats.NkeyOptionFromSeed(c.NATSNkeySeed)
		if err != nil {
			return nil, fmt.Errorf("FOREMAN_NATS_NKEY_SEED=%q: %w", c.NATSNkeySeed, err)
		}
		opts = append(opts, o)
	}
	if c.NATSCA != "" {
		opts = append(opts, nats.RootCAs(c.NATSCA))
	}
	return opts, nil
}

// natsConnectTimeout bounds the dial and handshake with one server of FOREMAN_NATS_URL.
const natsConnectTimeout = 5 * time.Second

// A node that froze (a paused VM, a wedged process, a cable pulled with no reset) keeps
// foreman's connection open and answers nothing: only unanswered pings tell. nats.go's
// defaults (a ping every 2 minutes, two unanswered) held foreman there for 4 to 6 minutes
// while the cluster's other nodes had elected new leaders within seconds: its submits got
// 503, its worker took nothing, the running job's lease (FOREMAN_ACK_WAIT) lapsed, so
// another Mac ran the job again, and its presence (30 s) lapsed, so the other foremen
// canceled its waiting callers' jobs as those of a dead foreman. A ping every 5 s, two
// unanswered, leaves such a node within 10 to 15 s, which with the presence heartbeat's
// 10 s renews the presence before it lapses, at the cost of one ping and pong each 5 s.
// A server answers a ping after what the connection sent before it: a 10 s wait means a
// link too slow to be foreman's (a 32 MiB body over less than about 26 Mbit/s).
const (
	natsPingInterval = 5 * time.Second
	natsMaxPingsOut  = 2
)

// connectNATS connects to urls, waiting while no server of them answers yet (a cluster
// starting beside foreman) until ctx ends; any other failure (a refused login, a bad
// certificate) ends it at once.
func connectNATS(ctx context.Context, urls string, opts []nats.Option, log *slog.Logger) (*nats.Conn, error) {
	pause := 250 * time.Millisecond
	for attempt := 1; ; attempt++ {
		nc, err := nats.Connect(urls, opts...)
		if err == nil || !errors.Is(err, nats.ErrNoServers) {
			return nc, err
		}
		log.Warn("waiting for the NATS cluster: no server answers yet", "nats_url", ollama.RedactURLs(urls), "attempt", attempt, "retry_in", pause, "err", ollama.RedactError(err, urls))
		t := time.NewTimer(pause)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, fmt.Errorf("%w (gave up waiting for the NATS cluster: %w)", err, ctx.Err())
		case <-t.C:
		}
		pause = min(2*pause, 5*time.Second)
	}
}
