package natsd

// WarnCleartext is warnCleartext, for its table test: a listener off loopback need not
// be bound to check what is said of it.
var WarnCleartext = warnCleartext
