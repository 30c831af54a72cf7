from twisted.application.service import ServiceMaker

gateway = ServiceMaker(
    "gateway",
    "gateway.tap",
    "Translate newline-delimited messages into length-prefixed frames and back.",
    "gateway",
)
