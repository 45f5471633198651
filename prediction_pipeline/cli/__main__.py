from prediction_pipeline.cli import main

main()
