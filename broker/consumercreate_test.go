package broker_test

import (
	"os"
	"path/filepath"
	"testing"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
)

// nats-server can fail the create of a queue consumer on its own files, once: a consumer
// of the same name deleted a moment before (idle past its InactiveThreshold, or by a
// start's renew) may still be flushing its state file into the directory the new one is
// made in, and one of the two renames of o.dat.tmp finds the file gone ("code=500
// err_code=10012 description=rename …/o.dat.tmp …/o.dat: no such file or directory").
// The server removes the failed consumer's directory, so a create made again succeeds:
// Next makes it again at once and delivers the job, rather than failing the worker's
// pick (or a start's renew).
//
// That race is a matter of microseconds and cannot be made to happen on demand. A
// directory where the new consumer writes its state file fails the same write on the
// same path of the server, once, as deterministically.
func TestNextMakesAgainAConsumerWhoseCreateFailedOnItsFiles(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	ctx := ctxT(t)
	tok := token(t, "m")
	j := submit(t, b.Store, "m", `{"model":"m"}`)
	obstacle := filepath.Join(queueDir(b), "obs", broker.ConsumerName(tok), "o.dat.tmp")
	if err := os.MkdirAll(obstacle, 0o750); err != nil {
		t.Fatal(err)
	}
	d, err := b.Store.Next(ctx, tok)
	if err != nil || d == nil || d.JobID != j.ID {
		t.Fatalf("next on a consumer whose first create failed: %+v, %v; want job %s", d, err, j.ID)
	}
	// The consumer's own flush may be writing a file of that name by now.
	if fi, err := os.Stat(obstacle); err == nil && fi.IsDir() {
		// The server did not fail the create (nor remove the directory): the test
		// proves nothing.
		t.Fatal("the state file's obstacle is still there: the server wrote no state at the create")
	}
}
