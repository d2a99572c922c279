"""The LLM as a file for other runtimes: a GGUF of a model's LLM for llama.cpp (gguf_file.py, `flashvlm-export gguf`).

Above runtime/ (it builds the graph's own random LLM with runtime/answer.py and the stand-in tokenizer's vocabulary);
runtime/llama_cpp.py runs the GGUF. Both need the `llama` extra (`pip install -e ".[llama]"`: the gguf package and
llama-cpp-python, which compiles llama.cpp on install) and import it lazily.
"""
