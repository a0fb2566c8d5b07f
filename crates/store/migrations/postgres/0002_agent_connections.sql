CREATE TABLE agent_connections (
    agent_id TEXT NOT NULL,
    dispatcher_id TEXT NOT NULL,
    in_flight BIGINT NOT NULL,
    last_heartbeat BIGINT NOT NULL,
    PRIMARY KEY (agent_id, dispatcher_id)
);
