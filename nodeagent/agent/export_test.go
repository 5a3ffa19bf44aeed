package agent

// ForgetRevisionsAfter exposes forgetRevisionsAfter to the external tests.
const ForgetRevisionsAfter = forgetRevisionsAfter
