package streamrank.flink;

import org.apache.flink.api.java.tuple.Tuple2;
import org.apache.flink.connector.kafka.sink.KafkaRecordSerializationSchema;
import org.apache.kafka.clients.producer.ProducerRecord;

/** Writes (key, value) byte pairs to one topic (the Kafka sink of feature rows). */
public class RowRecords implements KafkaRecordSerializationSchema<Tuple2<byte[], byte[]>> {
    private final String topic;

    public RowRecords(String topic) { this.topic = topic; }

    @Override
    public ProducerRecord<byte[], byte[]> serialize(Tuple2<byte[], byte[]> row,
                                                    KafkaSinkContext context, Long timestamp) {
        return new ProducerRecord<>(topic, null, timestamp, row.f0, row.f1);
    }
}
