// Package app wires foreman together and takes it apart again: Start builds and starts
// every part from a Config (the settings of `foreman serve`, defaults filled in one
// place) and Shutdown stops them in order under one deadline: stop accepting HTTP and
// stop the worker (a running job goes back to the queue), answer the responses still
// waiting, stop the background parts, drain the NATS connection, shut the embedded
// server down.
//
// `foreman serve` is flag parsing, Start, a wait and Shutdown; the tests of cmd/foreman,
// of the public client and any other that needs a whole foreman start one the same way,
// so they test the order serve really uses. It is not internal for that reason (client's
// tests live outside cmd/foreman), and it imports the server side (gateway, worker,
// nats-server), so the client package itself must never import it.
package app
